"""Which procfs mounts a user could hide under a FUSE mount of their own (see hideable.py): the
judgement on a real directory tree, and `check` saying so on this host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import require_root

from pam_unshare import hideable, proc


def procfs_at(point: str) -> proc.Mount:
    return proc.Mount(point=point, fstype="proc", super_options=("rw",))


@pytest.fixture
def tree(tmp_path):
    """root/ (root's, 0755) holding: users/ (uid 4242's), shared/ (0777), sticky/ (1777),
    group/ (group 4242, 0775), plain/ (root's): each with a chroot/proc below."""
    require_root()  # hands directories to other owners
    root = tmp_path / "root"
    for name, owner, group, mode in [("users", 4242, 4242, 0o755), ("shared", 0, 0, 0o777),
                                     ("sticky", 0, 0, 0o1777), ("group", 0, 4242, 0o775),
                                     ("plain", 0, 0, 0o755)]:
        path = root / name / "chroot" / "proc"
        path.mkdir(parents=True)
        os.chown(root / name, owner, group)
        os.chmod(root / name, mode)
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o755)
    return root


def test_a_directory_others_may_write_above_a_procfs_is_reported(tree):
    mounts = [procfs_at(str(tree / name / "chroot" / "proc"))
              for name in ("users", "shared", "sticky", "group", "plain")]
    found = {entry.directory.rsplit("/", 1)[-1]: entry.writer
             for entry in hideable.hideable(mounts)}
    assert found == {"users": "uid 4242", "shared": "every user", "group": "group 4242"}


def test_proc_and_other_file_systems_are_not_judged(tree):
    writable = tree / "users" / "chroot" / "proc"
    assert hideable.hideable([procfs_at("/proc"), procfs_at("/proc/sys/fs/binfmt_misc"),
                              proc.Mount(str(writable), "tmpfs", ())]) == []


def test_check_warns_of_a_hideable_procfs_on_this_host(tree):
    """A procfs really mounted below a user's directory, in a private mount namespace: `check`
    on this host's /etc/pam.d names it as a warning (a warning: check's exit code is unchanged)."""
    point = tree / "users" / "chroot" / "proc"
    script = ("mount -t proc proc " + str(point) + " && "
              + f"{sys.executable} -P -m pam_unshare.cli check; echo rc=$?")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert f"warning: {point}: this procfs lies below {tree / 'users'}, which uid 4242" \
        in result.stdout, result.stdout + result.stderr
