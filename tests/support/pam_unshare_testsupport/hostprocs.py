"""Looking at sessions from the host: which process lives in which PID namespace, which one is a
session's PID 1, and waiting for them to go away.

Other test runs share this machine, so a test never picks "a process called sleep" or "some
pam_unshare": it tags the processes it starts with an environment variable (tagged()) or learns the
session's namespace from inside (`readlink /proc/self/ns/pid`, parsed by namespace_id()), and a
process is identified by its PID together with its start time, so a recycled PID never passes for
it.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, TypeVar

from pam_unshare import proc
from pam_unshare.proc import cmdline, pid_namespace, status_fields

# Environment variable that tags the processes a test starts inside a session.
TAG_VARIABLE = "PU_TEST_TAG"

T = TypeVar("T")


@dataclass(frozen=True)
class HostProcess:
    pid: int
    comm: str
    state: str
    flags: int
    cpu_ticks: int  # utime + stime
    start: int  # clock ticks after boot; with pid, the process's identity
    nspid: Tuple[int, ...]  # its PID in each namespace, from the host's down to its own

    @property
    def nested(self) -> bool:
        return len(self.nspid) > 1

    @property
    def is_namespace_init(self) -> bool:
        return self.nested and self.nspid[-1] == 1

    @property
    def zombie(self) -> bool:
        """Dead; only its parent's wait() is missing (on this machine the host's init reaps
        orphans late, so they stay a few seconds)."""
        return self.state in ("Z", "X")

    @property
    def exited(self) -> bool:
        """Dead, or dying: a PID 1 that has exited stays, in state S and without memory, until
        every other process of its namespace has been reaped by its parent; it is not a zombie
        yet, and the namespace is not over."""
        return self.zombie or bool(self.flags & proc.PF_EXITING)


def read_process(pid: int) -> HostProcess | None:
    """The process PID as the host sees it, or None once it is gone."""
    stat = proc.read_stat(pid)
    try:
        status = proc.status_fields(pid)
    except OSError:
        return None
    if stat is None:
        return None
    nspid = tuple(int(value) for value in status.get("NSpid", "").split())
    return HostProcess(pid=pid, comm=stat.comm, state=stat.state, flags=stat.flags,
                       cpu_ticks=stat.cpu_ticks, start=stat.start, nspid=nspid)


def processes() -> List[HostProcess]:
    return proc.processes(read_process)


def refresh(process: HostProcess) -> HostProcess | None:
    """PROCESS now, or None once it is gone (its PID recycled counts as gone)."""
    now = read_process(process.pid)
    if now is None or now.start != process.start:
        return None
    return now


def is_present(process: HostProcess) -> bool:
    """PROCESS still runs or is still exiting (anything but gone or a zombie)."""
    now = refresh(process)
    return now is not None and not now.zombie


def now_ticks() -> int:
    """The current time in the unit of HostProcess.start."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * proc.CLOCK_TICKS)


def namespace_id(text: str) -> int:
    """The inode number in `readlink /proc/PID/ns/pid` output, e.g. "pid:[4026532187]"."""
    match = re.search(r"pid:\[(\d+)\]", text)
    if match is None:
        raise ValueError(f"no PID namespace in {text!r}")
    return int(match.group(1))


def fd_targets(pid: int) -> Dict[int, str]:
    """Where each open descriptor of PID points, as `ls -l /proc/PID/fd` shows it."""
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return targets


# Entries that give the session a terminal. When the shell exits there, the terminal hangs up and
# its SIGHUP can reach a background job before `setsid` or `nohup` in it has run: a job meant to
# outlive the shell has to ignore SIGHUP from its fork on, i.e. before the shell starts it.
PTY_ENTRIES = ("sudo-pty", "sudo-rs-pty", "ssh-pty")


def survive_hangup(entry_name: str) -> str:
    """Shell prefix for a session command that starts a job meant to outlive the shell."""
    return "trap '' HUP; " if entry_name in PTY_ENTRIES else ""


def new_tag() -> str:
    return uuid.uuid4().hex


def tag_assignment(tag: str) -> str:
    """Shell prefix that tags a command: f"{tag_assignment(tag)} sleep 120"."""
    return f"{TAG_VARIABLE}={tag}"


def tagged(tag: str) -> List[HostProcess]:
    """Running processes whose environment carries TAG (see tag_assignment())."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for process in processes():
        if not process.exited and needle in proc.environ(process.pid):
            found.append(process)
    return found


def in_namespace(namespace: int, started_by: int | None = None,
                 include_zombies: bool = False) -> List[HostProcess]:
    """Processes of PID namespace NAMESPACE that still run or are still exiting, its PID 1
    included: as long as one is listed, the namespace is not over.

    STARTED_BY (see now_ticks()) keeps only processes started no later: once a namespace is gone
    the kernel may give its number to a new one, anybody's. INCLUDE_ZOMBIES adds the zombies."""
    return [process for process in processes()
            if process.nested and (include_zombies or not process.zombie)
            and (started_by is None or process.start <= started_by)
            and pid_namespace(process.pid) == namespace]


def namespace_init(namespace: int) -> HostProcess | None:
    """The running PID 1 of NAMESPACE, if any."""
    for process in in_namespace(namespace):
        if process.is_namespace_init and not process.exited:
            return process
    return None


def session_inits() -> List[HostProcess]:
    """Running PID 1s of sessions, anybody's: what `pgrep pam_unshare` would count."""
    return [process for process in processes()
            if process.comm == proc.INIT_COMM and process.is_namespace_init and not process.exited]


def kill(process: HostProcess, sig: int = signal.SIGKILL) -> None:
    """Sends SIG to PROCESS if it is still that process (through a pidfd: no recycled PID)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return
    try:
        if refresh(process) is not None:
            signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def kill_namespace(namespace: int, started_by: int) -> None:
    """Cleanup: SIGKILL every running process of NAMESPACE started by STARTED_BY (see
    in_namespace: a dead namespace's number may already belong to somebody else's session),
    its PID 1 first."""
    for process in sorted(in_namespace(namespace, started_by=started_by),
                          key=lambda p: not p.is_namespace_init):
        kill(process)


def wait_for(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Calls PROBE until it returns something true or TIMEOUT seconds have passed; returns the
    last result, for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def wait_until_none(probe: Callable[[], List[T]], timeout: float = 30.0,
                    interval: float = 0.05) -> List[T]:
    """Calls PROBE until it returns an empty list or TIMEOUT seconds have passed; returns the
    last list (empty on success), for the caller to assert on."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if not result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# ---- run on a test host -----------------------------------------------------------------------
# The isolation suite looks at remote hosts too: it copies this file there and runs
# `python3 hostprocs.py snapshot` (or kill) through testinfra; isolation/hostview.py reads the
# JSON. Same code on every host, stdlib only.

def environment_tags(pid: int) -> List[str]:
    prefix = f"{TAG_VARIABLE}=".encode()
    return [variable[len(prefix):].decode(errors="replace") for variable in proc.environ(pid)
            if variable.startswith(prefix)]


def snapshot() -> Dict[str, object]:
    rows = []
    for process in processes():
        rows.append({**process.__dict__, "nspid": list(process.nspid),
                     "pidns": pid_namespace(process.pid), "cmdline": cmdline(process.pid),
                     "tags": environment_tags(process.pid)})
    return {"now": now_ticks(), "self_pidns": pid_namespace(os.getpid()), "processes": rows}


def main(argv: List[str]) -> int:
    import json

    if argv[:1] == ["snapshot"]:
        json.dump(snapshot(), sys.stdout)
        return 0
    if argv[:1] == ["kill"] and len(argv) == 4:
        process = read_process(int(argv[1]))
        if process is not None and process.start == int(argv[2]):
            kill(process, int(argv[3]))
        return 0
    if argv[:1] == ["status"] and len(argv) == 2:
        json.dump(status_fields(int(argv[1])), sys.stdout)
        return 0
    if argv[:1] == ["fds"] and len(argv) == 2:
        json.dump(fd_targets(int(argv[1])), sys.stdout)
        return 0
    print("usage: hostprocs.py snapshot | kill PID START SIGNAL | status PID | fds PID",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
