"""The one reader of /proc: processes as the host sees them, their namespaces and mounts. Used
by `sessions`, `enter`, `status` (usermanager) and the benchmarks; what it returns is data a user
may control (comm, argv): callers decide with what only root can make (uids, namespace owners).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, TypeVar

from pam_unshare import linux

# The session init's side of csrc/init/protocol.h (tests/unit/test_protocol.py holds them equal):
# its comm, argv[0], and the words of argv[1] (logout mode) and argv[2] (scope=user).
INIT_COMM = "pam_unshare"
INIT_ARGV0 = "pam_unshare-init"
INIT_LINGER = "linger"
INIT_KILL = "kill"
INIT_USER = "user"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


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


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that anything here asks about (proc(5))."""

    comm: str
    state: str  # field 3
    ppid: int  # field 4
    flags: int  # field 9: task->flags (PF_EXITING: it has called exit)
    cpu_ticks: int  # fields 14 + 15: utime + stime
    children_ticks: int  # fields 16 + 17: cutime + cstime, its reaped children's
    start: int  # field 22: clock ticks after boot; with pid, the process's identity


# task->flags: the process has called exit (it may still wait for its namespace to empty).
PF_EXITING = 0x4


def parse_stat(text: str) -> Stat:
    """One /proc/PID/stat line. comm may hold blanks and parentheses: it ends at the last ")"."""
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 of proc(5)
    return Stat(comm=text[text.index("(") + 1:text.rindex(")")], state=fields[0],
                ppid=int(fields[1]), flags=int(fields[6]),
                cpu_ticks=int(fields[11]) + int(fields[12]),
                children_ticks=int(fields[13]) + int(fields[14]), start=int(fields[19]))


def read_stat(pid: int | str) -> Stat | None:
    """/proc/PID/stat, or None once PID is gone."""
    try:
        return parse_stat(read_bytes(f"/proc/{pid}/stat").decode(errors="replace"))
    except OSError:
        return None


def read_process(pid: int) -> Process | None:
    """PID as the host sees it, or None once it is gone."""
    try:
        stat = parse_stat(read_bytes(f"/proc/{pid}/stat").decode(errors="replace"))
        status = read_bytes(f"/proc/{pid}/status").decode(errors="replace")
        raw_argv = read_bytes(f"/proc/{pid}/cmdline")
    except (FileNotFoundError, ProcessLookupError):
        return None
    uid, nspid, uids = -1, (pid,), ()
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uids = tuple(int(value) for value in line.split()[1:5])
            uid = uids[0]
        elif line.startswith("NSpid:"):
            nspid = tuple(int(value) for value in line.split()[1:])
    return Process(pid=pid, ppid=stat.ppid, uid=uid, state=stat.state, start=stat.start,
                   comm=stat.comm, argv=_argv(raw_argv), nspid=nspid,
                   namespace=pid_namespace(pid), uids=uids)


def _argv(raw: bytes) -> Tuple[str, ...]:
    return tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1])


def cmdline(pid: int) -> List[str]:
    """PID's argv, [] once it is gone (or for a kernel thread)."""
    try:
        return list(_argv(read_bytes(f"/proc/{pid}/cmdline")))
    except OSError:
        return []


def pid_namespace(pid: int | str) -> int | None:
    """The inode of PID's PID namespace; None when it is gone or (the host's init seen from a
    container) not readable."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/pid")
        return int(link[link.index("[") + 1:link.rindex("]")])
    except (OSError, ValueError):
        return None


def status_fields(pid: int) -> Dict[str, str]:
    """/proc/PID/status as name -> value (as written: "Uid" -> "0\t0\t0\t0")."""
    text = read_bytes(f"/proc/{pid}/status").decode(errors="replace")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def processes(read: Callable[[int], T | None] = read_process) -> List[T]:
    """Every process READ (by default read_process) returns, skipping those gone meanwhile."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            process = read(int(name))
            if process is not None:
                found.append(process)
    return found


def environ(pid: int) -> List[bytes]:
    """PID's environment as NAME=VALUE strings, [] once it is gone or unreadable."""
    try:
        return read_bytes(f"/proc/{pid}/environ").split(b"\0")
    except OSError:
        return []


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
