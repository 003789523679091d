"""Vendor PAM files (/usr/lib/pam.d), on copies of Debian 13's real files: Linux-PAM reads
/etc/pam.d/NAME if it exists, else /usr/lib/pam.d/NAME, for a service and for every file it
includes. `enable` on a vendor-only service creates /etc/pam.d/NAME (vendor text plus our line),
`disable` removes it again when nothing else changed; check, status and the coverage audit read
both directories with that precedence."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Dict

import pytest

from pam_unshare import atomic, audit, pamd, status
from pam_unshare.stacks import VENDOR_DIR, PamTree, vendor_dir_for

TRIXIE = Path(__file__).resolve().parent / "fixtures" / "trixie"
VENDOR_ONLY = "systemd-user"  # Debian 13 ships it in /usr/lib/pam.d only (systemd 257)
# A vendor-only service that takes a PAM line (systemd-user never does: usermanager.py): the root
# fixture moves trixie's runuser to the vendor directory, as distributions that ship util-linux's
# PAM files in /usr/lib/pam.d have it.
VENDOR_PAM = "runuser"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A writable copy of trixie's etc/pam.d and usr/lib/pam.d under one root, as an image's."""
    for sub in ("etc/pam.d", "usr/lib/pam.d"):
        target = tmp_path / sub
        target.mkdir(parents=True)
        for path in (TRIXIE / sub).iterdir():
            shutil.copyfile(path, target / path.name)
            os.chmod(target / path.name, 0o644)
    os.rename(tmp_path / "etc/pam.d" / VENDOR_PAM, tmp_path / "usr/lib/pam.d" / VENDOR_PAM)
    return tmp_path


@pytest.fixture
def run(root, cli_in):
    """Runs the command line against ROOT/etc/pam.d (whose vendor directory is
    ROOT/usr/lib/pam.d); returns (status, out, err)."""
    return cli_in(root / "etc/pam.d")


def snapshot(root: Path) -> Dict[str, str]:
    """Every file under ROOT with its content's hash and mode."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            info = os.lstat(path)
            data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
            found[str(path.relative_to(root))] = (f"{hashlib.sha256(data).hexdigest()} "
                                                  f"{info.st_mode:o}")
    return found


def test_the_fixtures_are_trixies_files():
    etc, vendor = TRIXIE / "etc/pam.d", TRIXIE / "usr/lib/pam.d"
    assert "Used by systemd --user instances." in (vendor / VENDOR_ONLY).read_text()
    assert not (etc / VENDOR_ONLY).exists()
    assert "pam_systemd.so" in (etc / "common-session").read_text()


@pytest.mark.parametrize("path", sorted(p.relative_to(TRIXIE) for p in TRIXIE.rglob("*")
                                        if p.is_file()), ids=str)
def test_every_trixie_file_parses_and_round_trips_byte_for_byte(path):
    text = pamd.read(TRIXIE / path)
    enabled = pamd.with_session_line(text, pamd.session_line())
    assert pamd.parse(enabled).ours()
    assert pamd.without_session_line(enabled) == text


def test_the_vendor_directory_goes_with_the_pam_directory(tmp_path):
    assert vendor_dir_for(Path("/etc/pam.d")) == VENDOR_DIR == Path("/usr/lib/pam.d")
    assert vendor_dir_for(tmp_path / "etc/pam.d") == tmp_path / "usr/lib/pam.d"
    assert vendor_dir_for(tmp_path / "pam.d") is None


def test_pam_reads_etc_first_then_the_vendor_file(root):
    tree = PamTree(root / "etc/pam.d")
    assert tree.vendor_dir == root / "usr/lib/pam.d"
    assert tree.path(VENDOR_ONLY) == root / "usr/lib/pam.d" / VENDOR_ONLY
    assert tree.is_vendor(VENDOR_ONLY) and not tree.is_vendor("su")
    assert VENDOR_ONLY in tree.services()
    # Its @include common-session-noninteractive is found in /etc/pam.d.
    files = [entry.file for entry in tree.session_stack(VENDOR_ONLY)]
    assert VENDOR_ONLY in files and "common-session-noninteractive" in files
    (root / "etc/pam.d" / VENDOR_ONLY).write_text("session required pam_permit.so\n")
    shadowed = PamTree(root / "etc/pam.d")
    assert shadowed.path(VENDOR_ONLY) == root / "etc/pam.d" / VENDOR_ONLY
    assert [e.module_name for e in shadowed.session_stack(VENDOR_ONLY)] == ["pam_permit.so"]


def test_an_include_missing_in_etc_is_read_from_the_vendor_directory(root):
    etc, vendor = root / "etc/pam.d", root / "usr/lib/pam.d"
    os.rename(etc / "common-session-noninteractive", vendor / "common-session-noninteractive")
    files = [entry.file for entry in PamTree(etc).session_stack(VENDOR_ONLY)]
    assert "common-session-noninteractive" in files
    assert [e.file for e in PamTree(etc, vendor_dir=None).session_stack("su")]
    with pytest.raises(Exception, match="common-session-noninteractive does not exist"):
        PamTree(etc, vendor_dir=None).session_stack("cron")


def test_the_coverage_audit_sees_the_vendor_only_service(root):
    uncovered = {u.service for u in audit.coverage(PamTree(root / "etc/pam.d"))}
    assert VENDOR_ONLY in uncovered
    bare = {u.service for u in audit.coverage(PamTree(root / "etc/pam.d", vendor_dir=None))}
    assert VENDOR_ONLY not in bare


def test_enable_creates_the_etc_file_and_disable_removes_it_byte_for_byte(run, root,
                                                                          module_path):
    before = snapshot(root)
    vendor = (root / "usr/lib/pam.d" / VENDOR_PAM).read_bytes()
    code, out, err = run("enable", VENDOR_PAM)
    assert code == 0, err
    created = root / "etc/pam.d" / VENDOR_PAM
    assert f"enabled {VENDOR_PAM}: {created} line" in out
    assert "made from the vendor file" in err
    text = created.read_text()
    assert pamd.without_session_line(text).encode() == vendor
    assert pamd.session_line(str(module_path)) in text.splitlines()
    assert os.stat(created).st_mode & 0o7777 == 0o644
    record = root / "etc/pam.d" / (VENDOR_PAM + pamd.VENDOR_SUFFIX)
    assert record.read_bytes() == vendor
    assert not (root / "etc/pam.d" / (VENDOR_PAM + pamd.BACKUP_SUFFIX)).exists()
    assert (root / "usr/lib/pam.d" / VENDOR_PAM).read_bytes() == vendor

    code, out, err = run("check")
    assert code == 0 and VENDOR_PAM in out, out + err
    facts = status.collect(root / "etc/pam.d")
    assert VENDOR_PAM in [entry.service for entry in facts.enabled]
    assert VENDOR_PAM not in [entry.service for entry in facts.uncovered]

    code, out, err = run("enable", VENDOR_PAM, "-o", "onerr=succeed")
    assert code == 0, err
    assert record.read_bytes() == vendor

    code, out, err = run("disable", VENDOR_PAM)
    assert code == 0, err
    assert "PAM reads that file again" in err
    assert snapshot(root) == before


def test_enable_dry_run_writes_nothing(run, root):
    before = snapshot(root)
    code, out, err = run("enable", VENDOR_PAM, "--dry-run")
    assert code == 0, err
    assert "+session required" in out
    assert snapshot(root) == before


def test_disable_keeps_the_file_when_the_vendor_file_changed(run, root):
    assert run("enable", VENDOR_PAM)[0] == 0
    old = (root / "usr/lib/pam.d" / VENDOR_PAM).read_bytes()
    # A package upgrade ships a new vendor file.
    (root / "usr/lib/pam.d" / VENDOR_PAM).write_bytes(old + b"# upgraded\n")
    code, out, err = run("disable", VENDOR_PAM)
    assert code == 0, err
    assert "has changed since enable" in err
    assert (root / "etc/pam.d" / VENDOR_PAM).read_bytes() == old
    assert not (root / "etc/pam.d" / (VENDOR_PAM + pamd.VENDOR_SUFFIX)).exists()


def test_disable_keeps_the_file_when_the_admin_edited_it(run, root):
    assert run("enable", VENDOR_PAM)[0] == 0
    created = root / "etc/pam.d" / VENDOR_PAM
    created.write_text("# local change\n" + created.read_text())
    code, out, err = run("disable", VENDOR_PAM)
    assert code == 0, err
    assert "has changed since" in err
    vendor = (root / "usr/lib/pam.d" / VENDOR_PAM).read_text()
    assert created.read_text() == "# local change\n" + vendor


def assert_refused(run, root: Path, says: str, *args: str) -> str:
    """`pam-unshare ARGS` refuses (status 2) saying SAYS and writes nothing; returns stderr."""
    before = snapshot(root)
    code, out, err = run(*args)
    assert code == 2 and says in err, err
    assert snapshot(root) == before
    return err


@pytest.mark.parametrize("command, path", [
    ("enable", f"usr/lib/pam.d/{VENDOR_PAM}"),
    ("disable", f"etc/pam.d/{VENDOR_PAM}{pamd.VENDOR_SUFFIX}"),
], ids=["vendor-file-on-enable", "vendor-record-on-disable"])
def test_a_symlinked_vendor_file_or_record_is_refused_and_nothing_written(run, root, command,
                                                                          path):
    if command == "disable":
        assert run("enable", VENDOR_PAM)[0] == 0
    os.rename(root / path, root / "elsewhere")
    (root / path).symlink_to(root / "elsewhere")
    assert_refused(run, root, "symbolic link", command, VENDOR_PAM)


def test_a_symlink_in_etc_over_a_vendor_file_is_refused(run, root):
    (root / "etc/pam.d" / VENDOR_PAM).symlink_to(root / "usr/lib/pam.d" / VENDOR_PAM)
    assert_refused(run, root, "symbolic link", "enable", VENDOR_PAM)


def test_a_vendor_file_that_does_not_parse_is_refused(run, root):
    (root / "usr/lib/pam.d" / VENDOR_PAM).write_text("session maybe pam_permit.so\n")
    assert_refused(run, root, "does not parse", "enable", VENDOR_PAM)


def test_enable_is_all_or_nothing_with_vendor_files(run, root):
    err = assert_refused(run, root, "unknown service no-such-service",
                         "enable", VENDOR_PAM, "su", "no-such-service")
    assert "usr/lib/pam.d/no-such-service" in err


def test_a_failed_write_leaves_neither_the_file_nor_its_record(run, root, monkeypatch):
    before = snapshot(root)
    real = atomic.replace_at
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(atomic, "replace_at", fail_second)
    code, out, err = run("enable", VENDOR_PAM)
    assert code == 1 and "No space left on device" in err, err
    assert snapshot(root) == before


def test_a_vendor_file_with_our_line_is_not_edited(run, root, module_path):
    vendor = root / "usr/lib/pam.d" / VENDOR_PAM
    vendor.write_text(pamd.with_session_line(vendor.read_text(),
                                             pamd.session_line(str(module_path))))
    assert_refused(run, root, "does not edit", "disable", VENDOR_PAM)
    code, out, err = run("check")
    assert code == 0, out + err
    assert VENDOR_PAM in out


def test_an_etc_file_the_admin_made_is_never_removed(run, root):
    """Without enable's record, a copy identical to the vendor file is the admin's: disable
    takes out our line only."""
    vendor = (root / "usr/lib/pam.d" / VENDOR_PAM).read_bytes()
    (root / "etc/pam.d" / VENDOR_PAM).write_bytes(vendor)
    assert run("enable", VENDOR_PAM)[0] == 0
    assert not (root / "etc/pam.d" / (VENDOR_PAM + pamd.VENDOR_SUFFIX)).exists()
    code, out, err = run("disable", VENDOR_PAM)
    assert code == 0, err
    assert (root / "etc/pam.d" / VENDOR_PAM).read_bytes() == vendor
