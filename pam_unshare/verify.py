"""`pam-unshare verify`: proves, on this host as configured right now, that a session sees no
process outside itself, through any channel.

It starts a foreign process (as nobody, with a secret word on its command line; in a systemd
scope when systemd is PID 1, so that systemd's process lists have a unit to show), runs the
channel probes (pam_unshare.probes) as root outside any session (the control, which must see
it), then opens a real PAM session through each service and runs the same probes in it as the
user. Each session is opened in a child process: the module moves its caller into the session's
mount namespace and makes its next children members of the session's PID namespace, which this
process must not become. The user is a throwaway account unless one is given. Everything it
starts or creates is removed at the end, also on SIGINT, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

from pam_unshare import audit, forked, probes
from pam_unshare.errors import Failed, NeedsRoot, Refused
from pam_unshare.stacks import PamTree, is_service_name

# libpam reads its configuration from here, whatever we are told: no --pam-dir.
PAM_DIR = Path("/etc/pam.d")
FOREIGN_USER = "nobody"
CONTROL = "root"  # the control column: root, outside any session
SESSION_DEADLINE = 600  # seconds for one session's probe; its commands time out far earlier
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class Cell:
    entry: str  # a PAM service, or "root" for the control
    channel: str
    verdict: str  # closed, OPEN or n/a
    evidence: str

    @property
    def open(self) -> bool:
        return self.verdict == probes.OPEN


@dataclass(frozen=True)
class EntryError:
    entry: str
    message: str


@dataclass(frozen=True)
class Foreign:
    pid: int
    user: str
    unit: str | None


@dataclass
class Report:
    user: str
    throwaway_user: bool
    foreign: Foreign
    entries: List[str]
    cells: List[Cell] = field(default_factory=list)
    errors: List[EntryError] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # e.g. a session that failed to close

    @property
    def leaks(self) -> List[Cell]:
        return [cell for cell in self.cells if cell.open and cell.entry != CONTROL]

    @property
    def ok(self) -> bool:
        return not self.leaks and not self.errors

    def as_dict(self) -> Dict[str, object]:
        data = asdict(self)
        data["leaks"] = [asdict(cell) for cell in self.leaks]
        data["ok"] = self.ok
        return data


def systemd_booted() -> bool:
    return os.path.isdir("/run/systemd/system")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


class ForeignProcess:
    """`sh -c 'sleep ...' SECRET` as nobody, in its own process group (and scope)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.unit: str | None = None
        self.process: subprocess.Popen | None = None

    def start(self) -> Foreign:
        try:
            account = pwd.getpwnam(FOREIGN_USER)
        except KeyError:
            raise Failed(f"no user {FOREIGN_USER} on this host to own the foreign process") \
                from None
        command = ["/bin/sh", "-c", "sleep 86400; exit 0", self.secret]
        if systemd_booted() and shutil.which("systemd-run"):
            # A scope, not a service: its process is this child, and no ExecStart property
            # repeats the secret for anyone to read. The description is fixed for the same
            # reason (systemd-run's default is the command line).
            self.unit = f"pu-verify-{secrets.token_hex(4)}.scope"
            argv = ["systemd-run", "--scope", "--quiet", f"--unit={self.unit}",
                    "--description=pam-unshare verify: a foreign process",
                    f"--uid={account.pw_uid}", f"--gid={account.pw_gid}", "--", *command]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            start_new_session=True)
        else:
            self.process = subprocess.Popen(command, user=account.pw_uid, group=account.pw_gid,
                                            extra_groups=[], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        # Until then, systemd-run's own command line holds the secret too, as root's.
        wanted = b"\0".join(word.encode() for word in command) + b"\0"
        deadline = time.monotonic() + 60
        while _cmdline(self.process.pid) != wanted or _owner(self.process.pid) != account.pw_uid:
            if self.process.poll() is not None:
                why = self.process.stderr.read().decode(errors="replace").strip() \
                    if self.process.stderr else ""
                raise Failed(f"the foreign process exited at once ({self.process.returncode}"
                             f"{': ' + why if why else ''})")
            if time.monotonic() > deadline:
                raise Failed("the foreign process did not start within 60 s")
            time.sleep(0.05)
        return Foreign(self.process.pid, FOREIGN_USER, self.unit)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        if self.unit:  # gone with its last process; a failed scope stays listed until reset
            subprocess.run(["systemctl", "reset-failed", self.unit], capture_output=True)
        self.process = None


def _mounted_account_files() -> List[str]:
    """The account files that are mount points of their own (bind mounts, as in a sandbox)."""
    wanted = {f"/etc/{name}" for name in ("passwd", "group", "shadow", "gshadow")}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        points = {line.split()[4] for line in handle if len(line.split()) > 4}
    return sorted(wanted & points)


class ThrowawayUser:
    """A system account made for this run (useradd), removed with its home afterwards."""

    def __init__(self) -> None:
        self.name = f"pu-verify-{secrets.token_hex(3)}"
        self.created = False

    def create(self) -> str:
        mounted = _mounted_account_files()
        if mounted:
            # useradd would rename its new copy onto a mount point (which fails) after writing
            # its backup next to it, in the directory beneath the mount.
            raise Failed(f"{', '.join(mounted)} mounted over (a sandbox?): useradd cannot "
                         f"write there; pass --user to use an existing account")
        self.created = True  # from here on: a signal could land while useradd is writing
        result = subprocess.run(["useradd", "--system", "--user-group", "--create-home",
                                 "--shell", "/bin/sh", "--comment",
                                 "pam-unshare verify (temporary)", self.name],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise Failed(f"useradd {self.name} failed: {result.stderr.strip()} (pass --user "
                         f"to use an existing account)")
        return self.name

    def _kill_all(self, uid: int) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    os.kill(int(name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass

    def remove(self) -> None:
        if not self.created:
            return
        try:
            uid = pwd.getpwnam(self.name).pw_uid
        except KeyError:  # useradd failed, or was stopped before it wrote the account
            self.created = False
            return
        managed = systemd_booted() and shutil.which("loginctl") is not None
        units = [f"user@{uid}.service", f"user-runtime-dir@{uid}.service"]
        if managed:
            # Its user manager (started by pam_systemd) and runtime directory go with it; let
            # them stop on their own (killed, the manager would stay listed as failed).
            subprocess.run(["loginctl", "terminate-user", self.name], capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and subprocess.run(
                    ["systemctl", "is-active", "--quiet", *units]).returncode == 0:
                time.sleep(0.1)
        problem = ""
        for _ in range(50):
            self._kill_all(uid)
            result = subprocess.run(["userdel", "--remove", self.name], capture_output=True,
                                    text=True)
            # userdel exits 12 when only the mail spool was missing: the account is gone.
            if result.returncode in (0, 12):
                self.created = False
                if managed:
                    subprocess.run(["systemctl", "reset-failed", *units], capture_output=True)
                return
            problem = result.stderr.strip()
            time.sleep(0.2)
        raise Failed(f"userdel {self.name} failed: {problem}")


def _session_child(service: str, account: pwd.struct_passwd, out: int,
                   env: Dict[str, str]) -> int:
    """In a forked child, as root: opens the session, runs the probe as the user in a
    grandchild (the first process in the session's PID namespace), closes the session."""
    from pam_unshare.pamapi import PamError, Session

    for signum in SIGNALS:  # the parent decides when to stop; the session must close
        signal.signal(signum, signal.SIG_IGN)
    try:
        session = Session(service, account.pw_name)
    except (OSError, PamError) as error:
        os.write(out, f"\nverify-error\t{error}\n".encode())
        return 4
    try:
        try:
            session.open()
        except PamError as error:
            os.write(out, f"\nverify-error\t{error}\n".encode())
            return 4
        probe_env = {"PATH": PATH, "HOME": account.pw_dir, "USER": account.pw_name,
                     "LOGNAME": account.pw_name, "SHELL": "/bin/sh", "LC_ALL": "C",
                     **session.environment(), **env}
        child = os.fork()
        if child == 0:
            try:
                for signum in SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(null, 2)
                os.initgroups(account.pw_name, account.pw_gid)
                os.setgid(account.pw_gid)
                os.setuid(account.pw_uid)
                try:
                    os.chdir(account.pw_dir)
                except OSError:
                    os.chdir("/")
                argv = probes.argv()
                os.execve(argv[0], argv, probe_env)
            finally:
                os._exit(127)
        _, status = os.waitpid(child, 0)
        try:
            session.close()
        except PamError as error:  # the probe ran: its verdicts stand
            os.write(out, f"\nverify-note\t{error}\n".encode())
            return 5
        return os.waitstatus_to_exitcode(status)
    finally:
        session.end()


def _probe_in_session(service: str, account: pwd.struct_passwd, env: Dict[str, str],
                      notes: List[str]) -> List[probes.ChannelResult]:
    try:
        output, _ = forked.run(lambda out: _session_child(service, account, out, env),
                               timeout=SESSION_DEADLINE, own_group=True)
    except TimeoutError:
        raise Failed(f"{service}: the probe did not end within {SESSION_DEADLINE} s") from None
    text = output.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("verify-error\t"):
            raise Failed(line.split("\t", 1)[1])
        if line.startswith("verify-note\t"):
            notes.append(f"{service}: {line.split(chr(9), 1)[1]}")
    return probes.parse(text)


def _not_a_service(name: str) -> bool:
    """Files that no program names as its service: Debian's common-* include files, and libpam's
    fallback "other" (named as a service, libpam loads it twice: as the service and as the
    fallback, and its session modules run twice)."""
    return name == "other" or name.startswith("common-")


def _services(requested: Sequence[str]) -> List[str]:
    if requested:
        for service in requested:
            if not is_service_name(service) or not (PAM_DIR / service).is_file():
                raise Refused(f"unknown service {service}: {PAM_DIR / service} does not exist "
                              f"(libpam would use {PAM_DIR / 'other'} instead)")
        return list(dict.fromkeys(requested))
    found = [entry.service for entry in audit.enabled(PamTree(PAM_DIR))
             if not _not_a_service(entry.service)]
    if not found:
        raise Refused(f"no service in {PAM_DIR} runs pam_unshare.so: nothing to verify (name "
                      f"one with --service to see what it leaks)")
    return found


def _account(user: str) -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise Refused(f"no user named {user}") from None
    if account.pw_uid == 0:
        raise Refused("--user must be an ordinary user: root sees everything by design")
    if account.pw_name == FOREIGN_USER:
        raise Refused(f"--user must not be {FOREIGN_USER}, which owns the foreign process")
    return account


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@dataclass
class _Handlers:
    saved: Dict[int, object] = field(default_factory=dict)

    def catch(self) -> None:
        for signum in SIGNALS:
            self.saved[signum] = signal.signal(signum, _raise_interrupted)

    def ignore(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def run(user: str | None = None, services: Sequence[str] = ()) -> Report:
    """The whole verification; raises Interrupted (after cleaning up) on a signal."""
    if os.geteuid() != 0:
        raise NeedsRoot("pam-unshare verify must run as root: it opens sessions as another "
                        "user, starts a process as nobody and creates a throwaway user")
    entries = _services(services)
    account = _account(user) if user else None
    secret = f"pu-verify-secret-{secrets.token_hex(8)}"
    foreign = ForeignProcess(secret)
    throwaway = None if account else ThrowawayUser()
    handlers = _Handlers()
    handlers.catch()
    try:
        facts = foreign.start()
        if throwaway is not None:
            account = pwd.getpwnam(throwaway.create())
        assert account is not None
        report = Report(account.pw_name, throwaway is not None, facts, entries)
        env = probes.environment(facts.pid, secret, facts.unit)
        control = probes.run(facts.pid, secret, facts.unit)
        report.cells += [Cell(CONTROL, r.channel, r.verdict, r.evidence) for r in control]
        blind = [r.channel for r in control
                 if r.channel in probes.CONTROL_CHANNELS and not r.open]
        if blind:
            raise Failed(f"control cannot see the foreign process through {', '.join(blind)}: "
                         f"the probe is broken")
        for service in entries:
            try:
                results = _probe_in_session(service, account, env, report.notes)
            except (Failed, probes.ProbeError) as error:
                report.errors.append(EntryError(service, str(error)))
                continue
            report.cells += [Cell(service, r.channel, r.verdict, r.evidence) for r in results]
        return report
    finally:
        handlers.ignore()  # a second Ctrl-C must not cut the cleanup short
        try:
            foreign.stop()
        finally:
            try:
                if throwaway is not None:
                    throwaway.remove()
            finally:
                handlers.restore()


def format_report(report: Report) -> str:
    """The matrix channel x entry, then the evidence of each OPEN and each failed entry. In the
    control column "sees" is what must be: root, outside any session, sees the process."""
    columns = [CONTROL + " (control)", *report.entries]
    control_words = {probes.OPEN: "sees", probes.CLOSED: "-", probes.NOT_APPLICABLE: "n/a"}
    verdicts = {(cell.entry, cell.channel): cell.verdict for cell in report.cells}
    failed = {error.entry for error in report.errors}
    rows = [["channel", *columns]]
    for channel in probes.CHANNELS:
        row = [channel, control_words.get(verdicts.get((CONTROL, channel), ""), "?")]
        for entry in report.entries:
            row.append("error" if entry in failed else verdicts.get((entry, channel), "?"))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.append("")
    for cell in report.leaks:
        lines.append(f"OPEN: {cell.channel} through {cell.entry}: {cell.evidence}")
    for error in report.errors:
        lines.append(f"error: {error.entry}: no probe ran: {error.message}")
    for note in report.notes:
        lines.append(f"note: {note}")
    unit = f", unit {report.foreign.unit}" if report.foreign.unit else ""
    who = f"throwaway user {report.user}" if report.throwaway_user else f"user {report.user}"
    verdict = ("isolated: no channel shows the foreign process" if report.ok
               else f"NOT isolated: {len(report.leaks)} open channel(s)"
               + (f", {len(report.errors)} service(s) not verified" if report.errors else ""))
    lines.append(f"{verdict} (foreign process {report.foreign.pid} as {report.foreign.user}"
                 f"{unit}; sessions of {who})")
    return "\n".join(lines) + "\n"
