"""`pam-unshare enable` and `disable` on temporary copies of Debian 12's /etc/pam.d: round trips
byte for byte, idempotence, dry runs, refusals that write nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from pam_unshare import cli, pamd

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pam.d"
SERVICES = ("su", "sudo", "sudo-i", "sshd", "login")


@pytest.fixture
def run(pam_dir, cli_in):
    """Runs the command line in this process against PAM_DIR; returns (status, out, err)."""
    return cli_in(pam_dir)


def snapshot(directory: Path) -> Dict[str, str]:
    """Every file of DIRECTORY (hidden ones too) with its content's hash, mode and inode."""
    found = {}
    for path in sorted(directory.iterdir()):
        info = os.stat(path)
        found[path.name] = (f"{hashlib.sha256(path.read_bytes()).hexdigest()} "
                            f"{info.st_mode:o} {info.st_ino}")
    return found


def our_line(module_path: Path, *options: str) -> str:
    return pamd.session_line(str(module_path), options)


@pytest.mark.parametrize("service", SERVICES)
def test_enable_then_disable_is_byte_identical(run, pam_dir, service, module_path):
    original = (pam_dir / service).read_bytes()
    status, out, err = run("enable", service, "-o", "onerr=succeed")
    assert status == 0, err
    text = (pam_dir / service).read_text()
    assert text.count("pam_unshare.so") == 1
    assert our_line(module_path, "onerr=succeed") in text.splitlines()
    assert f"enabled {service}: {pam_dir / service} line" in out
    status, out, err = run("disable", service)
    assert status == 0, err
    assert (pam_dir / service).read_bytes() == original
    assert f"disabled {service}" in out


def test_several_services_at_once(run, pam_dir):
    originals = {s: (pam_dir / s).read_bytes() for s in SERVICES}
    assert run("enable", *SERVICES)[0] == 0
    assert all("pam_unshare.so" in (pam_dir / s).read_text() for s in SERVICES)
    assert run("disable", *SERVICES)[0] == 0
    assert {s: (pam_dir / s).read_bytes() for s in SERVICES} == originals


def test_a_second_enable_changes_nothing(run, pam_dir):
    assert run("enable", "su", "sudo")[0] == 0
    before = snapshot(pam_dir)
    status, out, _ = run("enable", "su", "sudo")
    assert status == 0
    assert snapshot(pam_dir) == before  # not even rewritten: same inodes
    assert "su: unchanged, nothing changed" in out


def test_changed_options_update_the_one_line(run, pam_dir, module_path):
    assert run("enable", "sshd", "-o", "debug")[0] == 0
    first = (pam_dir / "sshd").read_text().splitlines()
    assert run("enable", "sshd", "-o", "onerr=succeed", "-o", "exempt_groups=adm")[0] == 0
    second = (pam_dir / "sshd").read_text().splitlines()
    assert len(first) == len(second)
    changed = [(a, b) for a, b in zip(first, second) if a != b]
    assert changed == [(our_line(module_path, "debug"),
                        our_line(module_path, "onerr=succeed", "exempt_groups=adm"))]


def test_the_backup_holds_the_previous_version(run, pam_dir):
    original = (pam_dir / "su").read_bytes()
    assert run("enable", "su")[0] == 0
    assert (pam_dir / "su.pam-unshare.bak").read_bytes() == original


def test_mode_is_kept(run, pam_dir):
    os.chmod(pam_dir / "sudo", 0o600)
    assert run("enable", "sudo")[0] == 0
    assert os.stat(pam_dir / "sudo").st_mode & 0o7777 == 0o600


def test_dry_run_prints_a_diff_and_writes_nothing(run, pam_dir, module_path, tmp_path):
    before = snapshot(pam_dir)
    status, out, _ = run("enable", "su", "sshd", "--dry-run")
    assert status == 0
    assert snapshot(pam_dir) == before
    assert f"--- {pam_dir / 'su'}" in out and f"+++ {pam_dir / 'sshd'}" in out
    added = [line for line in out.splitlines() if line.startswith("+") and
             not line.startswith("+++")]
    assert added == ["+" + our_line(module_path)] * 2
    # It is a real patch: applied to a copy, it gives what enable writes.
    copy = tmp_path / "copy"
    shutil.copytree(pam_dir, copy)
    subprocess.run(["patch", "-s", "-p0", "-d", "/"], input=out.replace(str(pam_dir), str(copy)),
                   text=True, check=True)
    assert run("enable", "su", "sshd")[0] == 0
    assert (copy / "su").read_bytes() == (pam_dir / "su").read_bytes()
    assert (copy / "sshd").read_bytes() == (pam_dir / "sshd").read_bytes()


def test_disable_dry_run_writes_nothing(run, pam_dir):
    assert run("enable", "sudo")[0] == 0
    before = snapshot(pam_dir)
    status, out, _ = run("disable", "sudo", "--dry-run")
    assert status == 0 and "-session required" in out
    assert snapshot(pam_dir) == before


@pytest.mark.parametrize("options, message", [
    (["frobnicate"], 'invalid option "frobnicate": unknown option'),
    (["onerr=sometimes"], 'invalid option "onerr=sometimes": onerr must be fail or succeed'),
    (["debug", "exempt_users=al ice"], "invalid character in name list"),
    (["only_groups="], "empty list"),
    # Names that resolve to no group: a typo in only_groups would refuse every session.
    (["only_groups=pu_no_such_group"], "no group named pu_no_such_group on this host"),
    (["exempt_groups=root,pu_no_such_group"], "no group named pu_no_such_group on this host"),
    (["max_sessions=-1"], "max_sessions must be a number from 0 to 1024"),
])
def test_an_invalid_option_is_refused_and_nothing_written(run, pam_dir, options, message):
    before = snapshot(pam_dir)
    args = [arg for option in options for arg in ("-o", option)]
    status, out, err = run("enable", "su", *args)
    assert status == 2
    assert message in err and "nothing written" in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert snapshot(pam_dir) == before


@pytest.mark.parametrize("service, message", [
    ("nosuchservice", "unknown service nosuchservice"),
    ("../passwd", '"../passwd" is not a PAM service name'),
    (".hidden", '".hidden" is not a PAM service name'),
])
def test_an_unknown_service_is_refused(run, pam_dir, service, message):
    before = snapshot(pam_dir)
    status, _, err = run("enable", "su", service)
    assert status == 2 and message in err
    assert snapshot(pam_dir) == before


def test_a_file_that_does_not_parse_is_refused(run, pam_dir):
    (pam_dir / "sudo").write_text((pam_dir / "sudo").read_text() + "sesion required x.so\n")
    before = snapshot(pam_dir)
    status, _, err = run("enable", "su", "sudo")
    assert status == 2
    assert f"{pam_dir / 'sudo'} does not parse (line 9:" in err
    assert snapshot(pam_dir) == before
    status, _, err = run("disable", "sudo")
    assert status == 2 and snapshot(pam_dir) == before


def test_a_missing_module_is_refused(run, pam_dir, tmp_path):
    before = snapshot(pam_dir)
    status, _, err = run("enable", "su", "--module", str(tmp_path / "pam_unshare.so"),
                         module=False)
    assert status == 2 and "does not exist: every session would fail" in err
    status, _, err = run("enable", "su", "--module", "/bin/sh", module=False)
    assert status == 2 and "must name a file called pam_unshare.so" in err
    assert snapshot(pam_dir) == before


def test_a_module_path_pam_would_misread_is_refused(run, pam_dir, module_path, tmp_path):
    # PAM cuts a line at "#": "/opt/#x/pam_unshare.so" would load "/opt/", failing every login.
    odd = tmp_path / "#x"
    odd.mkdir()
    shutil.copyfile(module_path, odd / "pam_unshare.so")
    before = snapshot(pam_dir)
    status, _, err = run("enable", "su", "--module", str(odd / "pam_unshare.so"), module=False)
    assert status == 2 and "which PAM would not read back as one module path" in err
    assert snapshot(pam_dir) == before


def test_a_missing_pam_dir_is_refused(capsys, tmp_path, module_path):
    status = cli.main(["enable", "su", "--pam-dir", str(tmp_path / "none"), "--module",
                       str(module_path)])
    assert status == 2
    assert "no such directory" in capsys.readouterr().err


def test_su_l_is_skipped_when_su_runs_the_module(run, pam_dir):
    su_l = (pam_dir / "su-l").read_bytes()
    status, _, err = run("enable", "su-l", "su")
    assert status == 0
    assert "su-l: skipped: its session stack already runs pam_unshare.so through su" in err
    assert (pam_dir / "su-l").read_bytes() == su_l
    status, _, err = run("enable", "su-l")
    assert status == 0 and "skipped" in err
    assert (pam_dir / "su-l").read_bytes() == su_l


def test_enabling_su_after_su_l_says_su_l_now_reaches_it_twice(run, pam_dir):
    assert run("enable", "su-l")[0] == 0
    status, _, err = run("enable", "su")
    assert status == 0
    assert "su-l: reaches pam_unshare.so 2 times" in err
    assert "pam-unshare disable su-l" in err


def test_disabling_su_says_su_l_loses_it_too(run, pam_dir):
    assert run("enable", "su")[0] == 0
    status, _, err = run("disable", "su")
    assert status == 0
    assert "su-l: no longer runs pam_unshare.so either" in err


def test_a_file_included_before_other_session_lines_is_refused(run, pam_dir):
    # sshd and login have session lines after "@include common-session": enabling it there would
    # run pam_loginuid/pam_motd/pam_selinux after us.
    before = snapshot(pam_dir)
    status, _, err = run("enable", "common-session")
    assert status == 2
    # "must" where a module after it needs /proc/self, "should" where none does: refused alike.
    assert "be the last session module" in err and "nothing written" in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(pam_dir) == before


def test_disable_when_not_enabled_changes_nothing(run, pam_dir):
    before = snapshot(pam_dir)
    status, out, _ = run("disable", "su")
    assert status == 0 and "su: not enabled, nothing changed" in out
    assert snapshot(pam_dir) == before


def test_a_crash_between_write_and_rename_leaves_the_old_file(run, pam_dir, monkeypatch):
    before = (pam_dir / "su").read_bytes()
    real_replace = os.replace

    def crash(source, target, **fds):
        if Path(target).name == "su":
            raise OSError(5, "Input/output error")
        real_replace(source, target, **fds)

    monkeypatch.setattr(os, "replace", crash)
    status, out, err = run("enable", "su")
    assert status == 1
    assert err == (f"pam-unshare: writing {pam_dir / 'su'} failed: Input/output error; put back "
                   f"su.pam-unshare.bak as before, so nothing changed\n")
    assert (pam_dir / "su").read_bytes() == before
    assert not [p for p in pam_dir.iterdir() if p.name.startswith(".") or
                p.name.endswith(".bak")]
