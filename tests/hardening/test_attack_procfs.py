"""A user against the covering of other procfs mounts: a procfs the host mounted below a directory
the user may mount FUSE on (their own chroot's /proc), hidden under the user's own FUSE mount at
login, and revealed inside the session with `fusermount3 -u`; and the same FUSE mount stalled
(its daemon stopped), so that the module's walk to the procfs blocks. Each through real su,
bindfs and fusermount3 run by the user.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from conftest import require_tools

from hardening.attacker import as_user, module_lines_since, run_as, su_for_users
from pam_unshare import linux, proc

MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
FUSE_MAJOR, FUSE_MINOR = 10, 229
HIDDEN = "covering a procfs mount hidden under another mount"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_tools("bindfs", "fusermount3", "su", "setpriv")


@contextlib.contextmanager
def fuse_for_users() -> Iterator[None]:
    """/dev/fuse open to every user, as Debian's fuse3 makes it with udev, in this test's private
    mount namespace only (the machine's node stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="pu-fuse-dev-") as directory:
        node = Path(directory) / "fuse"
        os.mknod(node, 0o666 | 0o020000, os.makedev(FUSE_MAJOR, FUSE_MINOR))
        os.chmod(node, 0o666)
        linux.bind(str(node), "/dev/fuse")
        try:
            yield
        finally:
            subprocess.run(["umount", "/dev/fuse"], check=True)


@contextlib.contextmanager
def fuse_conf_allowing_other() -> Iterator[None]:
    """/etc/fuse.conf with user_allow_other (an admin's choice on many hosts: users' FUSE mounts
    that others, root included, may enter), in this test's mount namespace only."""
    with tempfile.TemporaryDirectory(prefix="pu-fuse-conf-") as directory:
        conf = Path(directory) / "fuse.conf"
        conf.write_text("user_allow_other\n")
        os.chmod(conf, 0o644)
        linux.bind(str(conf), "/etc/fuse.conf")
        try:
            yield
        finally:
            subprocess.run(["umount", "/etc/fuse.conf"], check=True)


@contextlib.contextmanager
def chroot_of(uid: int) -> Iterator[Path]:
    """The user's chroot, with a procfs the host mounted at its /proc: the directory is the
    user's, so the user may mount FUSE on it."""
    arena = Path(tempfile.mkdtemp(prefix="pu-procfs-arena-"))
    os.chmod(arena, 0o755)
    chroot, cover = arena / "chroot", arena / "cover"
    for directory in (chroot, cover):
        directory.mkdir()
        os.chown(directory, uid, uid)
    (chroot / "proc").mkdir()
    linux.mount("proc", str(chroot / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        yield chroot
    finally:
        # The user's FUSE mount and daemon first (root may not even look into the mount).
        subprocess.run(["umount", "-l", str(chroot)], capture_output=True, check=False)
        for process in proc.processes():
            if process.uid == uid and process.comm == "bindfs" and str(chroot) in process.argv:
                os.kill(process.pid, signal.SIGKILL)
        subprocess.run(["umount", str(chroot / "proc")], check=True)
        subprocess.run(["rm", "-rf", str(arena)], check=True)


def hide_under_fuse(uid: int, chroot: Path, allow_other: bool) -> int:
    """The user mounts bindfs (FUSE) over the chroot: the procfs below is out of reach by path
    (with ALLOW_OTHER root may enter the FUSE mount, and finds no proc there; without, root is
    refused at its root). The PID of the user's FUSE daemon."""
    cover = chroot.parent / "cover"
    who = "-o allow_other" if allow_other else "--no-allow-other"
    result = run_as(uid, f"bindfs -o nonempty {who} {shlex.quote(str(cover))} "
                         f"{shlex.quote(str(chroot))}")
    assert result.returncode == 0, result.stderr
    try:
        reachable = (chroot / "proc" / "1").exists()
    except PermissionError:  # root refused at the root of a FUSE mount without allow_other
        reachable = False
    assert not reachable, "the procfs is still reachable"
    return fuse_daemon(uid, chroot)


def fuse_daemon(uid: int, chroot: Path) -> int:
    daemons = [p.pid for p in proc.processes()
               if p.uid == uid and p.comm == "bindfs" and str(chroot) in p.argv]
    assert len(daemons) == 1, daemons
    return daemons[0]


@pytest.mark.parametrize("allow_other", [True, False], ids=["allow_other", "own"])
@pytest.mark.parametrize("onerr", ["fail", "succeed"])
def test_a_procfs_hidden_under_the_users_fuse_mount_refuses_the_session(pam_sandbox, users,
                                                                       onerr, allow_other):
    """Before, with allow_other: the module found no procfs at the path, took it for gone and
    left it uncovered; in the session the user unmounted the FUSE mount and read the host's
    processes there. Without allow_other the walk was refused, a failure that onerr=succeed
    turned into a session without a namespace."""
    uid = pam_sandbox.uids[users.alice]
    conf = fuse_conf_allowing_other() if allow_other else contextlib.nullcontext()
    with fuse_for_users(), conf, chroot_of(uid) as chroot:
        hide_under_fuse(uid, chroot, allow_other)
        mark = pam_sandbox.syslog.mark()
        reveal = (f"fusermount3 -u {shlex.quote(str(chroot))}; "
                  f"cat {shlex.quote(str(chroot / 'proc' / '1' / 'comm'))}")
        with pam_sandbox.options(f"onerr={onerr}"), su_for_users(pam_sandbox):
            result = run_as(uid, f"su {users.alice} -c {shlex.quote(reveal)}")
        lines = module_lines_since(pam_sandbox, mark)
    host_init = proc.read_stat(1)
    assert host_init is not None
    assert host_init.comm not in result.stdout, (
        f"the host's PID 1 read through the revealed procfs: {result.stdout!r} {lines}")
    assert "ran outside" not in result.stdout
    assert result.returncode != 0 and result.stdout == "", (result.stdout, result.stderr, lines)
    assert len(lines) == 1 and HIDDEN in lines[0], lines


def test_a_stalled_fuse_mount_on_the_way_refuses_the_session_under_onerr_succeed(pam_sandbox,
                                                                               users):
    """The user's FUSE daemon stopped: the module's walk to the procfs below blocks until the
    caller's timeout. Before: the timeout was a failure like any other, and onerr=succeed ran
    the session without a namespace."""
    uid = pam_sandbox.uids[users.alice]
    with fuse_for_users(), fuse_conf_allowing_other(), chroot_of(uid) as chroot:
        daemon = hide_under_fuse(uid, chroot, allow_other=True)
        os.kill(daemon, signal.SIGSTOP)
        try:
            mark = pam_sandbox.syslog.mark()
            with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
                result = subprocess.run(as_user(uid, f"su {users.alice} -c 'cat /proc/1/comm'"),
                                        capture_output=True, text=True, timeout=120,
                                        stdin=subprocess.DEVNULL, cwd="/")
            lines = module_lines_since(pam_sandbox, mark)
        finally:
            os.kill(daemon, signal.SIGCONT)
    assert result.stdout.strip() in ("", proc.INIT_COMM), (
        f"the session ran without a namespace: {result.stdout!r} {lines}")
    assert result.returncode != 0, (result.stdout, lines)
    assert len(lines) == 1 and "waiting for the session init to start" in lines[0], lines
    assert "onerr does not apply" in lines[0], lines
