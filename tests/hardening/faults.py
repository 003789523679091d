"""The failure paths of the module, one fault each, and the outcome each must have.

Every step is a libc or system call the module makes on its way into (or out of) a session; the
test-only shim csrc/test/fault_shim.c (LD_PRELOAD, built by `make -C csrc fault-shim`, never part
of the module) fails exactly that call, wherever it runs: in the caller (su, sudo, sshd) or in
the clone child that becomes the session's PID 1.

Outcomes:
  OPEN      the session cannot be isolated: onerr=fail refuses it, onerr=succeed runs it
            without a namespace; one error line names the step and the errno text
  RECOVERS  the module retries or falls back by design (EINTR, MFD_EXEC unknown): the session
            is namespaced and nothing is logged
  CLOSE     the failure happens at session close: the session ran namespaced, one line says
            what failed at close, and the lifeline still ends the namespace
  REFUSED   refused under onerr=succeed too, because a user can bring it about: a resource ran
            out (ENOMEM, EAGAIN, ENOSPC, EMFILE, ETIMEDOUT...: their rlimits, a cgroup limit
            delegated to them), a lookup of the user or a group failed (a squeezed cgroup makes
            NSS fail), the init-to-be was killed, or covering a procfs is impossible
            (hidden, or its walk stalled); one line says so
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

from pam_unshare_testsupport import hostprocs

from pam_unshare import linux, proc

OPEN = "open"
RECOVERS = "recovers"
CLOSE = "close"
REFUSED = "refused"

# Selector values the shim matches on (the first argument of prctl and the command of fcntl).
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
F_DUPFD_CLOEXEC = 1030
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
F_ADD_SEALS = 1033
F_OFD_SETLK = 37
RLIMIT_NOFILE = 7

CSRC = Path(__file__).resolve().parent.parent.parent / "csrc"


@dataclass(frozen=True)
class Step:
    """One injected fault: SPEC for the shim, the step text the module must log, and ERRNO_NAME
    for the errno text it must log (the injected one unless the module maps it)."""

    id: str
    spec: str
    step: str
    outcome: str = OPEN
    errno_name: str = ""
    options: Tuple[str, ...] = ()
    # scope=user joins: an existing namespace of the user must be there to join.
    needs_namespace: bool = False
    # A procfs mounted outside /proc (other_procfs_mounted): the module covers it, walking its
    # path, so the caller is not suspended during the child's work and waits with a timeout.
    other_procfs: bool = False
    user_known: bool = True  # False: the line says "(unknown)" for the user
    where: str = "caller"  # "caller" or "child" (the clone child, before it execs the init)
    # Each name must show up as an "inject" line in the shim's log: proof that the fault hit.
    injected: Tuple[str, ...] = field(default=())

    @property
    def errno_text(self) -> str:
        name = self.errno_name or self.spec.split(",")[-1].rsplit(":", 1)[1]
        return os.strerror(getattr(errno, name))

    @property
    def hit(self) -> Tuple[str, ...]:
        return self.injected or tuple(item.split(":")[0].split("@")[0]
                                      for item in self.spec.split(","))


USER = ("scope=user",)

STEPS: List[Step] = [
    # ---- the caller, before the namespaces exist
    Step("pam-user", "pam_get_item:1:EINVAL", "reading PAM_USER (no user is set)",
         user_known=False),
    Step("session-state-alloc", "calloc:1:ENOMEM", "allocating the session state",
         errno_name="ENOMEM", outcome=REFUSED),
    Step("session-state-pam-set-data", "pam_set_data:1:ENOMEM",
         "storing the session state (pam_set_data)", outcome=REFUSED),
    Step("group-lookup-user", "getpwnam_r:1:EIO",
         "looking up the user for group exemptions", options=("exempt_groups=pu_exempt",),
         outcome=REFUSED),
    Step("group-list-alloc", "calloc:1:ENOMEM", "allocating the user's group list",
         options=("exempt_groups=pu_exempt",), outcome=REFUSED),
    Step("group-list", "getgrouplist:1:EIO", "looking up the user's groups",
         errno_name="EOVERFLOW", options=("exempt_groups=pu_exempt",), outcome=REFUSED),
    Step("group-lookup-group", "getgrnam_r:1:EIO",
         "looking up a group named in the options", options=("exempt_groups=pu_exempt",),
         outcome=REFUSED),
    Step("uid-lookup", "getpwnam_r:1:EIO", "looking up the user's uid", outcome=REFUSED),
    Step("quota-open", "openat:1:EMFILE", "opening the session quota of the user", outcome=REFUSED),
    Step("quota-slot", f"fcntl={F_OFD_SETLK}:1:ENOLCK",
         "taking a slot of the user's session quota"),
    Step("lifeline-pipe", "pipe2:1:EMFILE", "creating the session lifeline pipe", outcome=REFUSED),
    Step("ready-pipe", "pipe2:2:EMFILE", "creating the session ready pipe", outcome=REFUSED),
    Step("stack-map", "mmap:1:ENOMEM", "mapping the stack of the clone child", outcome=REFUSED),
    Step("stack-guard", "mprotect:1:EACCES", "mapping the stack of the clone child"),
    Step("clone", "clone:1:EPERM", "creating the PID and mount namespaces"),
    # A pids limit of the caller's cgroup, which the user sets where systemd delegates it.
    Step("clone-pids-limit", "clone:1:EAGAIN", "creating the PID and mount namespaces",
         outcome=REFUSED),
    # ---- the clone child, before it execs the init
    Step("identity", "setresgid:1:EPERM", "setting the session init's uid and gid to 0",
         where="child"),
    Step("identity-uid", "setresuid:1:EPERM", "setting the session init's uid and gid to 0",
         where="child"),
    Step("limits", f"setrlimit={RLIMIT_NOFILE}:1:EINVAL",
         "setting the resource limits of the session init", where="child"),
    Step("propagation-mount", "mount:1:EPERM", "setting mount propagation of / in the session",
         where="child"),
    Step("proc-mount", "mount:2:EPERM", "mounting the session's /proc", where="child"),
    # Linux 6.8 and later: listmount and statmount; before, /proc/self/mountinfo (ENOSYS below).
    # The table of mounts not read whole, or a procfs not covered: refused, onerr or not (a user
    # can bury a mount point past the buffers: tests/hardening/test_attack_procfs.py).
    Step("cover-procfs-list", "listmount:1:EPERM",
         "covering the other procfs mounts of the session", outcome=REFUSED, where="child"),
    Step("cover-procfs-stat", "statmount:1:EIO",
         "covering the other procfs mounts of the session", outcome=REFUSED, where="child"),
    Step("cover-procfs-without-listmount", "listmount:1:ENOSYS", "", outcome=RECOVERS,
         where="child"),
    Step("cover-procfs", "listmount:1:ENOSYS,open@init:1:EMFILE",
         "covering the other procfs mounts of the session", outcome=REFUSED, errno_name="EMFILE",
         where="child"),
    Step("cover-procfs-read", "listmount:1:ENOSYS,read@init:1:EIO",
         "covering the other procfs mounts of the session", outcome=REFUSED, errno_name="EIO",
         where="child"),
    Step("cover-procfs-read-eintr", "listmount:1:ENOSYS,read@init:1:EINTR", "",
         outcome=RECOVERS, where="child"),
    Step("memfd", "memfd_create:1:EMFILE", "creating the memfd for the session init",
         where="child", outcome=REFUSED),
    Step("memfd-no-mfd-exec", "memfd_create:1:EINVAL", "", outcome=RECOVERS, where="child"),
    Step("memfd-write", "write:1:ENOSPC", "writing the session init", where="child",
         outcome=REFUSED),
    Step("memfd-write-eintr", "write:1:EINTR", "", outcome=RECOVERS, where="child"),
    Step("memfd-seal", f"fcntl={F_ADD_SEALS}:1:EPERM", "sealing the session init",
         where="child"),
    Step("chdir", "chdir:1:EACCES", "changing the session init's directory to /",
         where="child"),
    # Suspended, the child marks the caller's descriptors close-on-exec (Linux 5.11); where the
    # kernel knows no such flag it starts again unsuspended, which closes them.
    Step("close-range", "close_range:1:ENOMEM",
         "closing inherited descriptors in the session init", where="child", outcome=REFUSED),
    Step("close-range-cloexec-unknown", "close_range:1:EINVAL", "", outcome=RECOVERS,
         where="child"),
    Step("dup3", "dup3:1:EBADF", "passing descriptors to the session init", where="child"),
    Step("close-range-high", "close_range:2:ENOMEM",
         "closing inherited descriptors in the session init", where="child", outcome=REFUSED),
    Step("setgroups", "setgroups:1:EPERM", "dropping supplementary groups of the session init",
         where="child"),
    Step("securebits", f"prctl={PR_SET_SECUREBITS}:1:EPERM",
         "locking securebits of the session init", where="child"),
    Step("capbset-drop", f"prctl={PR_CAPBSET_DROP}:1:EPERM",
         "dropping the capability bounding set of the session init", where="child"),
    Step("ambient", f"prctl={PR_CAP_AMBIENT}:1:EPERM",
         "clearing ambient capabilities of the session init", where="child"),
    Step("no-new-privs", f"prctl={PR_SET_NO_NEW_PRIVS}:1:EPERM",
         "setting no_new_privs on the session init", where="child"),
    Step("execveat", "execveat:1:ENOEXEC", "executing the session init", where="child"),
    # What exec says when it finds no memory for the arguments (a cgroup squeezed by its user).
    Step("execveat-no-memory", "execveat:1:E2BIG", "executing the session init", where="child",
         outcome=REFUSED),
    Step("init-dies-before-ready", f"prctl={PR_SET_NO_NEW_PRIVS}:1:KILL",
         "starting the session init (it exited before it was ready)", errno_name="ECHILD",
         where="child", outcome=REFUSED),
    # A hang is possible only where the child walks paths (procfs mounts to cover); elsewhere the
    # caller is suspended during the child's work (CLONE_VFORK) and nothing there can block.
    # The child that walks to procfs mounts is not suspended (see other_procfs): its timeout, and
    # a procfs it cannot reach, are refused whatever onerr says (a user's FUSE mount can cause
    # either: tests/hardening/test_attack_procfs.py).
    Step("init-hangs-before-ready", f"prctl={PR_SET_NO_NEW_PRIVS}:1:HANG",
         "waiting for the session init to start", outcome=REFUSED, errno_name="ETIMEDOUT",
         where="child", other_procfs=True),
    Step("cover-procfs-pin", "open@init:1:EACCES",
         "covering a procfs mount hidden under another mount", outcome=REFUSED, where="child",
         other_procfs=True),
    # ---- the caller, waiting and joining
    Step("ready-poll", "poll:1:ENOMEM", "waiting for the session init to start", outcome=REFUSED),
    Step("ready-poll-eintr", "poll:1:EINTR", "", outcome=RECOVERS),
    Step("ready-read", "read@caller:1:EIO", "reading the session init's ready signal"),
    Step("ready-read-eintr", "read@caller:1:EINTR", "", outcome=RECOVERS),
    Step("setns", "setns:1:EPERM", "joining the session's namespaces (setns)"),
    # ---- session close
    Step("close-kill", "pidfd_send_signal:1:EPERM", "killing the session init (pidfd_send_signal)",
         outcome=CLOSE, options=("on_logout=kill",)),
    # ---- scope=user: finding or making the user's namespace
    Step("user-uid-lookup", "getpwnam_r:1:EIO", "looking up the user's uid", options=USER,
         outcome=REFUSED),
    Step("user-state-dir-mkdir", "mkdir:1:EACCES", "creating /run/pam_unshare", options=USER),
    Step("user-state-dir-open", "open:1:EMFILE", "opening /run/pam_unshare", options=USER,
         outcome=REFUSED),
    Step("user-state-dir-check", "fstat:1:EIO", "checking that /run/pam_unshare is root-only",
         errno_name="EPERM", options=USER),
    Step("user-lock-open", "openat:1:EMFILE", "opening the lock of the user's namespace",
         options=USER, outcome=REFUSED),
    Step("user-lock", "flock:1:ENOLCK", "locking the user's namespace", options=USER),
    Step("user-join-socket", "socket:1:EMFILE", "creating a socket to join the user's namespace",
         options=USER, outcome=REFUSED),
    Step("user-join-connect", "connect:1:EACCES", "connecting to the user's namespace",
         options=USER),
    Step("user-stale-socket", "unlinkat:1:EACCES",
         "removing the stale socket of the user's namespace", options=USER),
    Step("user-listen-socket", "socket:2:EMFILE", "creating the socket of the user's namespace",
         options=USER, where="child", outcome=REFUSED),
    Step("user-listen-bind", "bind:1:EADDRINUSE", "creating the socket of the user's namespace",
         options=USER, where="child"),
    Step("user-listen-listen", "listen:1:EINVAL", "creating the socket of the user's namespace",
         options=USER, where="child"),
    # ---- scope=user: joining a namespace that runs
    Step("user-join-wait", "poll:1:ENOMEM",
         "waiting for the user's namespace to accept the session", options=USER,
         needs_namespace=True, outcome=REFUSED),
    Step("user-join-answer", "read:1:EIO", "reading the answer of the user's namespace",
         options=USER, needs_namespace=True),
    Step("user-join-peercred", "getsockopt:1:EPERM",
         "checking who answers on the user's namespace socket", options=USER,
         needs_namespace=True),
    Step("user-join-pidfd", "pidfd_open:1:EMFILE", "taking a pidfd of the user's namespace init",
         options=USER, needs_namespace=True, outcome=REFUSED),
    Step("user-join-still-there", "poll:2:ENOMEM",
         "checking that the user's namespace init is still there", options=USER,
         needs_namespace=True, outcome=REFUSED),
    Step("user-join-setns", "setns:1:EPERM", "joining the session's namespaces (setns)",
         options=USER, needs_namespace=True),
]

STEP_IDS = [step.id for step in STEPS]
BY_ID: Dict[str, Step] = {step.id: step for step in STEPS}


@dataclass(frozen=True)
class Clone:
    """A child the module cloned into new namespaces, as the shim saw it from the caller."""

    pid: int
    start: int
    pidns: int | None
    mntns: int | None


CLONE_LINE = re.compile(r"^clone pid=(\d+) start=(\d+) pidns=(\d*) mntns=(\d*)$")


class FaultDir:
    """The shim's directory: `spec` (what to fail), `log` (what it did)."""

    def __init__(self, path: Path, shim: Path) -> None:
        self.path = path
        self.shim = shim
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)
        self.arm("")

    def arm(self, spec: str) -> None:
        (self.path / "spec").write_text(spec + "\n")
        (self.path / "log").write_text("")
        os.chmod(self.path / "log", 0o666)

    @property
    def env(self) -> Dict[str, str]:
        return {"LD_PRELOAD": str(self.shim), "PU_FAULT_DIR": str(self.path)}

    def wrapper(self) -> List[str]:
        return ["env", *(f"{key}={value}" for key, value in self.env.items())]

    def log(self) -> List[str]:
        return (self.path / "log").read_text().splitlines()

    def injected(self) -> List[str]:
        return [line.split()[1] for line in self.log() if line.startswith("inject ")]

    def clones(self) -> List[Clone]:
        found = []
        for line in self.log():
            match = CLONE_LINE.match(line)
            if match:
                found.append(Clone(int(match.group(1)), int(match.group(2)),
                                   int(match.group(3)) if match.group(3) else None,
                                   int(match.group(4)) if match.group(4) else None))
        return found


def namespace_of(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class SessionInit:
    """A PID 1 the module made, known by its start time (clock ticks after boot, the same in
    every namespace) and its PID namespace; PID is its host PID where known."""

    start: int
    pidns: int | None
    pid: int | None = None


def inits_of(clones: Sequence[Clone]) -> List[SessionInit]:
    return [SessionInit(c.start, c.pidns, c.pid) for c in clones]


INIT_PROBE = "echo init:$(readlink /proc/self/ns/pid):$(cut -d' ' -f22 /proc/1/stat)"
INIT_LINE = re.compile(r"init:pid:\[(\d+)\]:(\d+)")


def inits_in_output(output: str) -> List[SessionInit]:
    """The inits named by INIT_PROBE lines a session printed."""
    return [SessionInit(int(start), int(ns)) for ns, start in INIT_LINE.findall(output)]


def parent_of(pid: int) -> int | None:
    stat = proc.read_stat(pid)
    return stat.ppid if stat is not None else None


def leftovers(inits: Sequence[SessionInit], strict: bool = False) -> List[str]:
    """What is left of the namespaces behind INITS: each init that still exists, and each
    process still in its PID namespace. A namespace number the kernel has since given to somebody
    else's namespace (its PID 1 is not ours) is not counted: this machine runs other sessions too.

    A zombie init counts (nobody reaped it) unless it is an orphan waiting for the host's init,
    which on this machine reaps late: its namespace is over, and the caller that made it has
    exited. STRICT counts those too: an init-to-be the module gave up on must be reaped by the
    module itself before pam_open_session returns."""
    left = []
    wanted = {init.pidns: init for init in inits if init.pidns}
    for init in inits:
        if init.pid is None:
            continue
        process = hostprocs.read_process(init.pid)
        if process is None or (init.start != 0 and process.start != init.start):
            continue
        if process.zombie and not strict and parent_of(init.pid) == 1:
            continue
        left.append(f"init {init.pid} still there: state {process.state}, comm {process.comm}, "
                    f"parent {parent_of(init.pid)}")
    if not wanted:
        return left
    by_ns: Dict[int, List[hostprocs.HostProcess]] = {}
    for process in hostprocs.processes():
        ns = namespace_of(process.pid, "pid") if process.nested else None
        if ns in wanted:
            by_ns.setdefault(ns, []).append(process)
    for ns, found in by_ns.items():
        heads = [p for p in found if p.is_namespace_init]
        if any(head.start != wanted[ns].start for head in heads):
            continue  # the number was reused
        for process in found:
            if init_pid_known(process, inits):
                continue  # dealt with above
            if process.is_namespace_init and process.zombie and not strict and \
                    parent_of(process.pid) == 1:
                continue
            left.append(f"process {process.pid} ({process.comm}, state {process.state}) in "
                        f"session namespace {ns}")
    return left


def init_pid_known(process: hostprocs.HostProcess, inits: Sequence[SessionInit]) -> bool:
    return any(init.pid == process.pid and init.start == process.start for init in inits)


def wait_no_leftovers(inits: Sequence[SessionInit], timeout: float = 10.0) -> List[str]:
    return hostprocs.wait_until_none(lambda: leftovers(inits), timeout=timeout)


@contextlib.contextmanager
def other_procfs_mounted(active: bool) -> Iterator[None]:
    """A procfs mounted outside /proc in the callers' mount namespace (the test's private
    sandbox), while the block runs, when ACTIVE."""
    if not active:
        yield
        return
    point = tempfile.mkdtemp(prefix="pu-other-procfs-")
    try:
        linux.mount("proc", point, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        try:
            yield
        finally:
            subprocess.run(["umount", point], check=True)
    finally:
        os.rmdir(point)


def mount_table() -> List[str]:
    """This process's mounts (mount namespace of the callers), without the mount ids, which the
    kernel hands out anew."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sorted(" ".join(line.split()[2:]) for line in handle)


def run(argv: Sequence[str], timeout: float = 90) -> subprocess.CompletedProcess:
    """Runs a caller with a hard limit: a hang shows as rc 124/137, never as a stuck suite."""
    return subprocess.run(["timeout", "-k", "5", str(int(timeout)), *argv],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace")


def session_probe(marker: Path) -> str:
    """What every faulted session runs: proof it ran, and in which PID namespace."""
    return (f"touch {shlex.quote(str(marker))}; echo ran:yes; "
            "echo pidns:$(readlink /proc/self/ns/pid); echo comm:$(cat /proc/1/comm)")


def wait_for_lines(read: Callable[[], List[str]], predicate: Callable[[List[str]], bool],
                   timeout: float = 5.0) -> List[str]:
    """Polls READ() (the module's lines so far) until PREDICATE(lines) holds or TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read()
        if predicate(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


SELECTORS = {"prctl=24": "prctl(PR_CAPBSET_DROP)", "prctl=28": "prctl(PR_SET_SECUREBITS)",
             "prctl=38": "prctl(PR_SET_NO_NEW_PRIVS)", "prctl=47": "prctl(PR_CAP_AMBIENT)",
             "fcntl=1030": "fcntl(F_DUPFD_CLOEXEC)", "fcntl=1033": "fcntl(F_ADD_SEALS)",
             "fcntl=37": "fcntl(F_OFD_SETLK)", "setrlimit=7": "setrlimit(RLIMIT_NOFILE)"}


ORDINALS = {"1": "", "2": "2nd ", "3": "3rd "}


def describe(spec: str) -> str:
    """"prctl=38:1:EPERM" -> "prctl(PR_SET_NO_NEW_PRIVS) -> EPERM"; "mount:2:EPERM" ->
    "2nd mount -> EPERM"."""
    parts = []
    for item in spec.split(","):
        name, nth, action = item.rsplit(":", 2)
        name = SELECTORS.get(name.split("@")[0], name.split("@")[0])
        action = {"KILL": "killed", "HANG": "hangs 60 s"}.get(action, action)
        parts.append(f"{ORDINALS.get(nth, nth + 'th ')}{name} -> {action}")
    return ", then ".join(parts)


def markdown_table() -> str:
    """The README's fault table: every step, its outcome under onerr=fail and onerr=succeed
    (the same under su, sudo and sshd: tests/hardening checks each)."""
    rows = ["| step | call failed | in | options | logged step: errno text | onerr=fail | "
            "onerr=succeed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for step in STEPS:
        options = ", ".join([*(f"`{option}`" for option in step.options),
                             *(["joining"] if step.needs_namespace else []),
                             *(["other procfs"] if step.other_procfs else [])])
        if step.outcome == OPEN:
            logged = f"{step.step}: {step.errno_text}"
            fail, succeed = "refused", "runs, no namespace"
        elif step.outcome == REFUSED:
            logged = f"{step.step}: {step.errno_text} (onerr does not apply)"
            fail = succeed = "refused"
        elif step.outcome == RECOVERS:
            logged = "none"
            fail = succeed = "namespaced"
        else:
            logged = f"at close: {step.step}: {step.errno_text}"
            fail = succeed = "namespaced; still ends"
        rows.append(f"| `{step.id}` | {describe(step.spec)} | {step.where} | {options} | "
                    f"{logged} | {fail} | {succeed} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
