"""`enable` and `disable` either do everything or nothing, keep the backup from before enable, and
never lock anyone out on a host where sessions cannot get namespaces (issue 20, item 6)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import require_root, require_tools

SCRIPT = Path(sys.executable).parent / "pam-unshare"


def pam_unshare(*args: str, prefix: List[str] | None = None) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    result = subprocess.run([*(prefix or []), str(SCRIPT), *args], capture_output=True,
                            text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def contents(directory: Path) -> Dict[str, str]:
    """Every entry of DIRECTORY (hidden ones too): a file's hash and mode, or what it is."""
    found = {}
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            found[path.name] = "directory"
        else:
            found[path.name] = (f"{hashlib.sha256(path.read_bytes()).hexdigest()} "
                                f"{os.stat(path).st_mode:o}")
    return found


def test_disable_keeps_the_backup_from_before_enable(pam_dir, module_path):
    original = (pam_dir / "su").read_bytes()
    backup = pam_dir / "su.pam-unshare.bak"
    enable = ["enable", "su", "--module", str(module_path), "--pam-dir", str(pam_dir)]
    assert pam_unshare(*enable).returncode == 0
    assert backup.read_bytes() == original
    # New options rewrite the line; the backup still holds the file from before enable.
    result = pam_unshare(*enable, "-o", "debug")
    assert result.returncode == 0 and "previous version" not in result.stdout
    assert backup.read_bytes() == original
    result = pam_unshare("disable", "su", "--pam-dir", str(pam_dir))
    assert result.returncode == 0
    assert "previous version" not in result.stdout
    assert (pam_dir / "su").read_bytes() == original
    assert backup.read_bytes() == original, "disable overwrote the backup with the enabled file"


def test_enabling_several_services_writes_all_or_nothing(pam_dir, module_path):
    # A real failure on the third file: its backup's name is taken by a directory.
    blocker = pam_dir / "sshd.pam-unshare.bak"
    blocker.mkdir()
    (blocker / "keep").write_text("a directory the rename cannot replace\n")
    before = contents(pam_dir)
    result = pam_unshare("enable", "su", "sudo", "sshd", "--module", str(module_path),
                         "--pam-dir", str(pam_dir))
    assert result.returncode == 1
    assert result.stderr == (
        f"pam-unshare: writing {pam_dir / 'sshd'} failed: sshd.pam-unshare.bak: Is a directory; "
        f"put back su.pam-unshare.bak, su, sudo.pam-unshare.bak, sudo as before, so nothing "
        f"changed\n")
    assert result.stdout == ""
    assert contents(pam_dir) == before


def test_disabling_several_services_writes_all_or_nothing(pam_dir, module_path):
    require_tools("chattr")
    assert pam_unshare("enable", "su", "sudo", "--module", str(module_path), "--pam-dir",
                       str(pam_dir)).returncode == 0
    before = contents(pam_dir)
    # A real failure on the second file: an immutable file cannot be renamed over.
    subprocess.run(["chattr", "+i", str(pam_dir / "sudo")], check=True)
    try:
        result = pam_unshare("disable", "su", "sudo", "--pam-dir", str(pam_dir))
    finally:
        subprocess.run(["chattr", "-i", str(pam_dir / "sudo")], check=True)
    assert result.returncode == 1
    assert result.stderr == (f"pam-unshare: writing {pam_dir / 'sudo'} failed: sudo: Operation "
                             f"not permitted; put back su as before, so nothing changed\n")
    assert contents(pam_dir) == before


def in_a_user_namespace_where(setup: str) -> List[str]:
    """A prefix that runs the command as root of a new user namespace (uid 0 maps to root, so
    root's files stay root's) after the shell command SETUP."""
    require_root()
    require_tools("unshare", "sh")
    return ["unshare", "--user", "--map-root-user", "sh", "-c", f'{setup} && exec "$@"', "sh"]


# Namespaces that cannot be created, for real: the limit is per user namespace, so this one
# only stops the command under test.
NO_PID_NAMESPACES = "echo 0 > /proc/sys/user/max_pid_namespaces"


@pytest.mark.parametrize("options", [["-o", "exempt_users=root"], []])
def test_enable_refuses_when_sessions_cannot_get_namespaces(pam_dir, module_path, options):
    before = contents(pam_dir)
    args = ["enable", "su", "sshd", *options, "--module", str(module_path), "--pam-dir",
            str(pam_dir)]
    result = pam_unshare(*args, prefix=in_a_user_namespace_where(NO_PID_NAMESPACES))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        "pam-unshare: sessions cannot get their own PID and mount namespaces on this host "
        "(user.max_pid_namespaces is 0; creating them fails: unshare: No space left on device): "
        "with onerr=fail every login through su, sshd would fail, root's included; nothing "
        "written\n")
    assert contents(pam_dir) == before
    # The same command where namespaces work (the same kind of user namespace, no limit):
    # enabled, so the refusal above came from the probe.
    result = pam_unshare(*args, prefix=in_a_user_namespace_where("true"))
    assert result.returncode == 0, result.stderr
    assert "enabled su" in result.stdout


def test_with_onerr_succeed_enable_goes_ahead_and_says_why_it_will_not_isolate(pam_dir,
                                                                              module_path):
    result = pam_unshare("enable", "su", "-o", "onerr=succeed", "--module", str(module_path),
                         "--pam-dir", str(pam_dir),
                         prefix=in_a_user_namespace_where(NO_PID_NAMESPACES))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "pam-unshare: note: sessions cannot get their own PID and mount namespaces on this host "
        "(user.max_pid_namespaces is 0; creating them fails: unshare: No space left on device): "
        "with onerr=succeed they will run without isolation\n")
