"""Live sessions, read from the host's process table (pam_unshare/proc.py), and entering one.

A session's PID 1 is the module's init: comm "pam_unshare", command line
"pam_unshare-init linger|kill", PID 1 of a nested PID namespace (the last NSpid field is 1). Any
user can fake all of that in a user namespace of their own (`unshare -Urpfm`, `exec -a`), so what
decides is what only root can make: real, effective, saved and filesystem uid 0 in the host's user
namespace, and PID and mount namespaces owned by the host's user namespace. Its processes are
those of that namespace and of namespaces nested in it. The service is recorded
nowhere: it is guessed from the init's parent, the process that opened the session (su, sudo,
"sshd: alice [priv]"), and is "unknown" once that has gone.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Set, Tuple

from pam_unshare import linux, proc
from pam_unshare.errors import Failed, NeedsRoot, Refused
from pam_unshare.proc import (
    CLOCK_TICKS,
    Process,
    boot_time,
    nested_in,
    processes,
    read_process,
)

# Short options of su and sudo that take a value (the next word is not an option).
_SU_VALUE_OPTIONS = set("cCgGsw")
_SUDO_VALUE_OPTIONS = set("CDghpRrTtUu")


@dataclass(frozen=True)
class Member:
    process: Process
    session_pid: int  # its PID inside the session's namespace
    user: str


@dataclass(frozen=True)
class Session:
    init: Process
    user: str
    service: str
    caller: Process | None
    started: float  # Unix time
    on_logout: str
    scope: str  # "user": every session of the user joins this namespace (scope=user)
    members: Tuple[Member, ...]  # the init first
    logins: Tuple[Process, ...]  # the processes outside that opened sessions into it (su, sshd)

    @property
    def id(self) -> int:
        """The session's PID namespace (inode number): unlike a PID, never reused while the
        session lives."""
        assert self.init.namespace is not None
        return self.init.namespace

    @property
    def pid(self) -> int:
        return self.init.pid

    def as_dict(self) -> Dict[str, object]:
        return {
            "id": self.id,
            "pid": self.pid,
            "namespace": f"pid:[{self.id}]",
            "user": self.user,
            "service": self.service,
            "caller": None if self.caller is None else {
                "pid": self.caller.pid, "comm": self.caller.comm, "args": self.caller.args},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "started_unix": round(self.started, 2),
            "on_logout": self.on_logout,
            "scope": self.scope,
            "logins": [{"pid": p.pid, "comm": p.comm, "args": p.args,
                        "service": _guess_service(p)} for p in self.logins],
            "processes": len(self.members),
            "members": [{"pid": m.process.pid, "session_pid": m.session_pid,
                         "ppid": m.process.ppid, "user": m.user, "comm": m.process.comm,
                         "args": m.process.args} for m in self.members],
        }


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _guess_service(caller: Process | None) -> str:
    if caller is None:
        return "unknown"
    name = caller.comm
    if name == "sshd" or caller.args.startswith("sshd:"):
        return "sshd"
    if name in ("su", "runuser"):
        return f"{name}-l" if _has_login_flag(caller.argv, _SU_VALUE_OPTIONS, "l") else name
    if name == "sudo":
        return "sudo-i" if _has_login_flag(caller.argv, _SUDO_VALUE_OPTIONS, "i") else "sudo"
    if name in ("login", "cron", "atd"):
        return name
    if name == "systemd":
        return "systemd-user"
    return "unknown"


def _has_login_flag(argv: Sequence[str], value_options: Set[str], letter: str) -> bool:
    """Whether a su/sudo command line asks for a login shell (-LETTER, --login, su's "-")."""
    words = iter(argv[1:])
    for word in words:
        if word == "--":
            return False
        if word == "--login" or (word == "-" and letter == "l"):
            return True
        if word.startswith("--"):
            continue
        if not word.startswith("-"):
            return False  # the user name or the command: the options have ended
        for index, char in enumerate(word[1:], 1):
            if char == letter:
                return True
            if char in value_options:
                if index == len(word) - 1:
                    next(words, None)  # its value is the next word
                break
    return False


def _session_of(init: Process, table: List[Process], by_pid: Dict[int, Process],
                boot: float) -> Session | None:
    if init.namespace is None:
        return None
    depth = len(init.nspid)
    members = []
    for process in table:
        if process.state in ("Z", "X") or len(process.nspid) < depth:
            continue
        if process.namespace == init.namespace or (
                len(process.nspid) > depth
                and nested_in(process, init.namespace, len(process.nspid) - depth)):
            members.append(Member(process, process.nspid[depth - 1], _user(process.uid)))
    members.sort(key=lambda m: (m.process.pid != init.pid, m.session_pid))
    owners = sorted({m.process.uid for m in members if m.process.pid != init.pid})
    users = [uid for uid in owners if uid != 0] or owners
    caller = by_pid.get(init.ppid) if init.ppid > 1 else None
    # A login's first process in the namespace has its parent outside: that parent is the login
    # (with scope=user, several logins share one namespace).
    inside = {m.process.pid for m in members}
    login_pids = sorted({m.process.ppid for m in members
                         if m.process.ppid not in inside and m.process.ppid > 1})
    logins = tuple(by_pid[pid] for pid in login_pids if pid in by_pid)
    return Session(
        init=init,
        user=",".join(_user(uid) for uid in users) if users else "unknown",
        service=_guess_service(caller),
        caller=caller,
        started=boot + init.start / CLOCK_TICKS,
        on_logout=init.argv[1] if len(init.argv) > 1 else proc.INIT_LINGER,
        scope="user" if len(init.argv) > 2 and init.argv[2] == proc.INIT_USER else "session",
        members=tuple(members),
        logins=logins,
    )


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(f"pam-unshare {command} must run as root: it reads other users' "
                        f"/proc/PID/ns and joins namespaces")


def list_sessions() -> List[Session]:
    """The live sessions, oldest first."""
    table = processes()
    by_pid = {process.pid: process for process in table}
    boot = boot_time()
    found = []
    for process in table:
        if process.is_session_init:
            session = _session_of(process, table, by_pid, boot)
            if session is not None:
                found.append(session)
    return sorted(found, key=lambda s: (s.init.start, s.pid))


def find(sessions: List[Session], key: str) -> Session:
    """The session KEY names: an id from `pam-unshare sessions`, or the host PID of its PID 1."""
    if not key.isdigit():
        raise Refused(f'"{key}" is not a session id or PID (see pam-unshare sessions)')
    number = int(key)
    for session in sessions:
        if number in (session.id, session.pid):
            return session
    raise Refused(f"no live session has id or PID {key} (see pam-unshare sessions)")


def _open_program(name: str) -> int:
    """NAME found on PATH and opened here, in the host's mount namespace: what runs inside the
    session is never a path resolved there."""
    path = shutil.which(name)
    if path is None:
        raise Failed(f"cannot run {name}: not found on PATH")
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise Failed(f"cannot run {name}: {error.strerror}") from None


def enter(session: Session, argv: Sequence[str]) -> int:
    """Runs ARGV in SESSION's PID and mount namespaces (where ps shows that session's view) and
    returns its exit status. The session's PID 1 is pinned through a pidfd, so a recycled PID
    can never lead into somebody else's namespaces, and checked again through it: a process that
    only looks like a session init (a user's own namespace) is refused."""
    program = _open_program(argv[0])
    try:
        _join(session)
        return _run(program, argv)
    finally:
        os.close(program)


def _join(session: Session) -> None:
    try:
        pidfd = os.pidfd_open(session.pid)
    except ProcessLookupError:
        raise Failed(f"session {session.id} has ended") from None
    try:
        now = read_process(session.pid)
        if now is None or now.start != session.init.start or not now.looks_like_session_init:
            raise Failed(f"session {session.id} has ended")
        if not now.is_session_init:
            raise Refused(f"PID {session.pid} is not a session of pam_unshare: it is not root's, "
                          f"or its namespaces belong to a user namespace of a user; not entering")
        # Alive after the checks, so /proc/PID that they read was this very process.
        signal.pidfd_send_signal(pidfd, 0)
        linux.setns(pidfd, linux.CLONE_NEWPID | linux.CLONE_NEWNS)
    except ProcessLookupError:
        raise Failed(f"session {session.id} has ended") from None
    finally:
        os.close(pidfd)


def _run(program: int, argv: Sequence[str]) -> int:
    # Like system(3): the child gets the terminal's signals, we wait.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                   signal.SIGQUIT)}
    child = os.fork()
    if child == 0:
        try:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_IGN if handler == signal.SIG_IGN
                              else signal.SIG_DFL)
            # Scripts need their descriptor after exec (the interpreter opens /dev/fd/N).
            os.set_inheritable(program, True)
            os.execve(program, list(argv), os.environ)
        except OSError as error:
            os.write(2, f"pam-unshare: cannot run {argv[0]}: {error.strerror}\n".encode())
        finally:
            os._exit(127)
    _, status = os.waitpid(child, 0)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
