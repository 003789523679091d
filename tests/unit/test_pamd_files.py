"""pamd on Debian 12's real PAM files, and its writes: atomic, mode and owner kept, a backup,
nothing left behind by a crash."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest
from conftest import require_root

from pam_unshare import pamd
from pam_unshare.errors import Failed, Refused

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pam.d"
DEBIAN_FILES = sorted(path.name for path in FIXTURES.iterdir())
LINE = "session required pam_unshare.so onerr=succeed"


@pytest.fixture
def pam_dir(tmp_path):
    """A writable copy of the Debian fixture tree (the fixtures themselves stay read-only)."""
    directory = tmp_path / "pam.d"
    directory.mkdir()
    for name in DEBIAN_FILES:
        shutil.copyfile(FIXTURES / name, directory / name)
        os.chmod(directory / name, 0o644)
    return directory


def test_the_fixtures_are_debians_files():
    assert {"su", "su-l", "sudo", "sudo-i", "sshd", "login", "common-session"} <= set(
        DEBIAN_FILES)
    assert "@include common-session" in (FIXTURES / "su").read_text()


@pytest.mark.parametrize("name", DEBIAN_FILES)
def test_every_debian_file_parses_and_round_trips_byte_for_byte(name):
    original = pamd.read(FIXTURES / name)
    enabled = pamd.with_session_line(original, LINE)
    assert pamd.without_session_line(enabled) == original
    pam = pamd.parse(enabled)
    ours = pam.ours()
    assert len(ours) == 1
    assert pamd.is_placed(pam, ours[0])
    assert len(pamd.split_lines(enabled)) == len(pamd.split_lines(original)) + 1


@pytest.mark.parametrize("name, after", [
    ("su", "@include common-session"),
    ("sudo", "@include common-session-noninteractive"),
    ("sudo-i", "@include common-session"),
    ("login", "@include common-password"),
    ("sshd", "@include common-password"),
    ("su-l", "session\t\tinclude\t\tsu"),
])
def test_the_line_follows_the_last_session_line_or_include(name, after):
    lines = pamd.with_session_line(pamd.read(FIXTURES / name), LINE).splitlines()
    assert lines[lines.index(LINE) - 1] == after


def test_a_write_keeps_mode_and_saves_a_backup(pam_dir):
    path = pam_dir / "su"
    os.chmod(path, 0o640)
    before = path.read_bytes()
    backup = pamd.write(path, pamd.with_session_line(pamd.read(path), LINE))
    assert backup == pam_dir / "su.pam-unshare.bak"
    assert backup.read_bytes() == before
    assert os.stat(path).st_mode & 0o7777 == 0o640
    assert os.stat(backup).st_mode & 0o7777 == 0o640
    assert LINE in path.read_text()


def test_a_write_keeps_the_owner(pam_dir):
    require_root()
    path = pam_dir / "sudo"
    os.chown(path, 4321, 4322)
    pamd.write(path, pamd.with_session_line(pamd.read(path), LINE))
    info = os.stat(path)
    assert (info.st_uid, info.st_gid) == (4321, 4322)


def test_a_crash_between_write_and_rename_leaves_the_old_file(pam_dir, monkeypatch):
    path = pam_dir / "sshd"
    before = path.read_bytes()
    real_replace = os.replace

    def crash(source, target, **fds):
        if Path(target).name == path.name:
            raise OSError(5, "simulated crash before the rename")
        real_replace(source, target, **fds)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Failed, match="simulated crash before the rename; put back "
                       "sshd.pam-unshare.bak"):
        pamd.write(path, pamd.with_session_line(pamd.read(path), LINE))
    assert path.read_bytes() == before
    # The backup written just before went again with the failure: nothing changed.
    assert sorted(p.name for p in pam_dir.iterdir()) == DEBIAN_FILES


def test_bytes_that_are_not_utf8_survive(pam_dir):
    path = pam_dir / "other"
    original = b"# caf\xe9 (latin-1 comment)\n" + path.read_bytes()
    path.write_bytes(original)
    pamd.write(path, pamd.with_session_line(pamd.read(path), LINE))
    pamd.write(path, pamd.without_session_line(pamd.read(path)))
    assert path.read_bytes() == original


def test_a_symlinked_service_file_is_refused_and_its_target_untouched(pam_dir):
    # A link may point anywhere (a file authselect manages, a host file from a copied tree):
    # writing through it is how root was steered into /etc/ld.so.preload (issue 20, item 4).
    real = pam_dir / "sudo-real"
    os.replace(pam_dir / "sudo", real)
    before = real.read_bytes()
    (pam_dir / "sudo").symlink_to("sudo-real")
    with pytest.raises(Refused, match="sudo is a symbolic link"):
        pamd.write(pam_dir / "sudo", pamd.with_session_line(pamd.read(pam_dir / "sudo"), LINE))
    assert (pam_dir / "sudo").is_symlink()
    assert real.read_bytes() == before


def test_the_lock_is_exclusive(pam_dir):
    with pamd.locked(pam_dir):
        other = os.open(pam_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert not any(p.name.startswith(".") for p in pam_dir.iterdir())
