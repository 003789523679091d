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

from hardening.attacker import as_user, fuse_for_users, module_lines_since, run_as, su_for_users
from pam_unshare import linux, proc

MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
HIDDEN = "covering a procfs mount hidden under another mount"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_tools("bindfs", "fusermount3", "su", "setpriv")


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


# ---- a procfs mount point past what the module's buffers hold --------------------------------

DEPTH, NAME = 20, "d" * 250
LINE_MAX = 40 * 1024  # MOUNTINFO_LINE_MAX of csrc/namespace.c

BURY = """
import os, sys
top = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fd = top
for _ in range(int(sys.argv[2])):
    os.mkdir(sys.argv[3], dir_fd=fd)
    fd = os.open(sys.argv[3], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
os.rename("chroot", "chroot", src_dir_fd=top, dst_dir_fd=fd)
"""


@contextlib.contextmanager
def own_arena(uid: int) -> Iterator[Path]:
    """A directory of the user's holding their chroot, with a procfs the host mounted at its
    /proc: the user may move the chroot anywhere below."""
    arena = Path(tempfile.mkdtemp(prefix="pu-procfs-deep-"))
    os.chmod(arena, 0o755)
    os.chown(arena, uid, uid)
    chroot = arena / "chroot"
    chroot.mkdir()
    os.chown(chroot, uid, uid)
    (chroot / "proc").mkdir()
    linux.mount("proc", str(chroot / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    try:
        yield arena
    finally:
        bring_back(arena)
        subprocess.run(["umount", str(chroot / "proc")], check=True)
        subprocess.run(["rm", "-rf", str(arena)], check=True)


def procfs_point_in(arena: Path) -> str:
    """Where the chroot's procfs is now (the user moved it), from the mount table."""
    return next(entry.point for entry in proc.mounts()
                if entry.point.startswith(f"{arena}/") and entry.point.endswith("/chroot/proc"))


def bring_back(arena: Path) -> None:
    """The chroot, wherever the user left it (a path too long to name whole), back at the top:
    walked to with directory descriptors, as the user did."""
    relative = procfs_point_in(arena)[len(str(arena)) + 1:].split("/")[:-2]
    top = os.open(arena, os.O_RDONLY | os.O_DIRECTORY)
    fd = top
    for name in relative:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    if fd != top:
        os.rename("chroot", "chroot", src_dir_fd=fd, dst_dir_fd=top)


def test_a_procfs_buried_past_the_buffers_is_refused(pam_sandbox, users):
    """The user moves their chroot 20 directories of 250 bytes deep: the procfs's mount point no
    longer fits statmount's buffer (EOVERFLOW). Before: a plain failure, which onerr=succeed
    turned into a session without a namespace."""
    uid = pam_sandbox.uids[users.alice]
    with own_arena(uid) as arena:
        buried = run_as(uid, shlex.join(["python3", "-c", BURY, str(arena), str(DEPTH), NAME]))
        assert buried.returncode == 0, buried.stderr
        mark = pam_sandbox.syslog.mark()
        with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
            result = run_as(uid, f"su {users.alice} -c 'cat /proc/1/comm'")
        lines = module_lines_since(pam_sandbox, mark)
    assert result.stdout.strip() in ("", proc.INIT_COMM), (result.stdout, lines)
    assert result.returncode != 0, (result.stdout, lines)
    assert len(lines) == 1 and "onerr does not apply" in lines[0], lines


MOVER = """
import os, sys
top = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
def walk(path, make):
    fd = top
    for name in [n for n in path.split('/') if n]:
        if make and not os.path.exists(f'/proc/self/fd/{fd}/{name}'):
            os.mkdir(name, dir_fd=fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    return fd
os.rename('chroot', 'chroot', src_dir_fd=walk(sys.argv[2], False),
          dst_dir_fd=walk(sys.argv[3], True))
"""

WALK = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for name in sys.argv[2].split("/"):
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
print(open("/proc/1/comm").read().strip(), open(f"/proc/self/fd/{fd}/1/comm").read().strip()
      if os.path.exists(f"/proc/self/fd/{fd}/1") else "-")
"""


def test_a_procfs_line_cut_inside_its_type_is_refused_before_linux_6_8(pam_sandbox, users,
                                                                      fault_dir):
    """Before Linux 6.8 (here: the shim fails listmount with ENOSYS) the child reads mountinfo
    through a 40 KiB buffer and judges a longer line by its start. The user sizes the path of
    their chroot so that the buffer ends inside " - proc ". Before: the line was taken for
    another file system, and the procfs stayed uncovered in a namespaced session."""
    uid = pam_sandbox.uids[users.alice]
    host = proc.read_stat(1)
    assert host is not None
    seen = []
    with own_arena(uid) as arena:
        where = ""

        def move(to: str) -> None:
            nonlocal where
            moved = run_as(uid, shlex.join(["python3", "-c", MOVER, str(arena), where, to]))
            assert moved.returncode == 0, moved.stderr
            where = to

        def separator_offset() -> int:
            line = next(entry for entry in Path("/proc/self/mountinfo").read_text().splitlines()
                        if entry.split()[4].startswith(f"{arena}/")
                        and entry.split()[4].endswith("/chroot/proc"))
            return line.index(" - ")

        base = "/".join([NAME] * 150)
        move(base)
        extra = LINE_MAX - 5 - separator_offset()
        count = (extra - 20) // 201
        middle = base + "".join("/" + "m" * 200 for _ in range(count))
        cut = extra - count * 201 - 1
        try:
            fault_dir.arm("listmount:0:ENOSYS")
            for length in range(max(1, cut - 10), cut + 9):
                move(f"{middle}/{'f' * length}")
                walk = ["python3", "-c", WALK, str(arena), f"{where}/chroot/proc"]
                result = subprocess.run(
                    [*fault_dir.wrapper(), "su", users.alice, "-c", shlex.join(walk)],
                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
                seen.append((length, result.returncode, result.stdout.strip()))
        finally:
            fault_dir.arm("")
    leaks = [entry for entry in seen if entry[2].endswith(host.comm)]
    assert leaks == [], seen
    assert any(entry[1] != 0 for entry in seen), f"no length cut the type: {seen}"
