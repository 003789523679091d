"""The one reader of /proc: processes as the host sees them, their namespaces and mounts. Used
by `sessions`, `enter`, `status` (usermanager) and the benchmarks; what it returns is data a user
may control (comm, argv): callers decide with what only root can make (uids, namespace owners).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from typing import List, Tuple

from pam_unshare import linux

# What the session init calls itself (csrc/init/protocol.h): comm, and argv[0].
INIT_COMM = "pam_unshare"
INIT_ARGV0 = "pam_unshare-init"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Process:
    pid: int  # in the host's PID namespace
    ppid: int
    uid: int
    state: str
    start: int  # clock ticks after boot: with pid, the process's identity
    comm: str
    argv: Tuple[str, ...]
    nspid: Tuple[int, ...]  # its PID in each namespace, from the host's down to its own
    namespace: int | None  # inode of /proc/PID/ns/pid (None: not readable)
    uids: Tuple[int, ...] = ()  # real, effective, saved, filesystem, as the host sees them

    @property
    def args(self) -> str:
        return " ".join(self.argv) if self.argv else f"[{self.comm}]"

    @property
    def looks_like_session_init(self) -> bool:
        """What the process says of itself: any user can say the same (see is_session_init)."""
        return (self.comm == INIT_COMM and bool(self.argv) and self.argv[0] == INIT_ARGV0
                and len(self.nspid) > 1 and self.nspid[-1] == 1
                and self.state not in ("Z", "X"))

    @property
    def is_session_init(self) -> bool:
        """A session's PID 1, proven by what only root can make: all its uids 0, and it, its PID
        namespace and its mount namespace in or owned by the host's user namespace."""
        return (self.looks_like_session_init and len(self.uids) == 4
                and all(uid == 0 for uid in self.uids) and made_by_host_root(self.pid))


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_process(pid: int) -> Process | None:
    """PID as the host sees it, or None once it is gone."""
    try:
        stat = read_bytes(f"/proc/{pid}/stat").decode(errors="replace")
        status = read_bytes(f"/proc/{pid}/status").decode(errors="replace")
        raw_argv = read_bytes(f"/proc/{pid}/cmdline")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold blanks and parentheses: it ends at the last ")".
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5)
    uid, nspid, uids = -1, (pid,), ()
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uids = tuple(int(value) for value in line.split()[1:5])
            uid = uids[0]
        elif line.startswith("NSpid:"):
            nspid = tuple(int(value) for value in line.split()[1:])
    try:
        link = os.readlink(f"/proc/{pid}/ns/pid")
        namespace: int | None = int(link[link.index("[") + 1:link.rindex("]")])
    except (OSError, ValueError):
        namespace = None
    argv = tuple(arg.decode(errors="replace") for arg in raw_argv.split(b"\0")[:-1])
    return Process(pid=pid, ppid=int(fields[1]), uid=uid, state=fields[0],
                   start=int(fields[19]), comm=comm, argv=argv, nspid=nspid,
                   namespace=namespace, uids=uids)


def processes() -> List[Process]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            process = read_process(int(name))
            if process is not None:
                found.append(process)
    return found


def boot_time() -> float:
    for line in read_bytes("/proc/stat").decode().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def nested_in(process: Process, namespace: int, levels: int) -> bool:
    """Whether PROCESS's PID namespace lies LEVELS below NAMESPACE (asks the kernel)."""
    try:
        fd = os.open(f"/proc/{process.pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for _ in range(levels):
            parent = fcntl.ioctl(fd, linux.NS_GET_PARENT)
            os.close(fd)
            fd = parent
        return os.fstat(fd).st_ino == namespace
    except OSError:
        return False
    finally:
        os.close(fd)


def host_user_namespace() -> int:
    """The user namespace this (root) process runs in: the host's."""
    return os.stat("/proc/self/ns/user").st_ino


def owner_of(path: str) -> int | None:
    """The inode of the user namespace that owns the namespace file PATH, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        owner = fcntl.ioctl(fd, linux.NS_GET_USERNS)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


def made_by_host_root(pid: int) -> bool:
    """Whether PID lives in the host's user namespace and its PID and mount namespaces are owned
    by it: true of every session init, false of anything a user built with `unshare -U`."""
    host = host_user_namespace()
    try:
        own = os.stat(f"/proc/{pid}/ns/user").st_ino
    except OSError:
        return False
    return (own == host and owner_of(f"/proc/{pid}/ns/pid") == host
            and owner_of(f"/proc/{pid}/ns/mnt") == host)


@dataclass(frozen=True)
class Mount:
    point: str  # where it is mounted, octal escapes decoded
    fstype: str
    super_options: Tuple[str, ...]


def _unescape(field: str) -> str:
    """mountinfo writes blanks, tabs, newlines and backslashes in paths as octal escapes."""
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def mounts(pid: int | str = "self") -> List[Mount]:
    """The mount table PID sees (its mount namespace); empty when it cannot be read."""
    try:
        text = read_bytes(f"/proc/{pid}/mountinfo").decode(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        found.append(Mount(_unescape(fields[4]), rest[0], tuple(rest[2].split(","))))
    return found


def executable(pid: int) -> str:
    """What PID runs (/proc/PID/exe), "" when it cannot be read. Unlike argv, a process cannot
    choose it."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
