"""Text output of the command line: diffs, tables, trees, the status report. No decisions."""

from __future__ import annotations

import difflib
import time
from typing import Dict, List, Sequence

from pam_unshare import pamd
from pam_unshare.services import Change
from pam_unshare.sessions import Member, Session
from pam_unshare.status import ModuleFacts, Status
from pam_unshare.system import KernelSupport

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """TEXT with every character a terminal could act on (escape sequences, newlines, bidi
    controls) written as a backslash escape: command lines and names are chosen by users, and
    must never reach an administrator's terminal as anything but text."""
    return "".join(
        _ESCAPES.get(char) or (char if char.isprintable() else
                               f"\\x{ord(char):02x}" if ord(char) < 0x100 else
                               f"\\u{ord(char):04x}" if ord(char) < 0x10000 else
                               f"\\U{ord(char):08x}")
        for char in text)


def diff(change: Change) -> str:
    """A unified diff of the change, as `diff -u` writes it (a patch(1) can apply it)."""
    out = []
    for line in difflib.unified_diff(pamd.split_lines(change.before),
                                     pamd.split_lines(change.after),
                                     fromfile=str(change.path), tofile=str(change.path)):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                   + "\n" for row in rows)


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def sessions_table(sessions: List[Session]) -> str:
    rows = [("ID", "PID", "USER", "SERVICE", "STARTED", "PROCS", "SCOPE", "LOGINS")]
    rows += [(str(s.id), str(s.pid), printable(s.user), s.service, _when(s.started),
              str(len(s.members)), s.scope,
              ",".join(str(login.pid) for login in s.logins) or "-")
             for s in sessions]
    return table(rows)


def session_tree(session: Session) -> str:
    """The session's processes as a tree: host PID, [PID inside the session], user, command."""
    caller = (f"caller {session.caller.pid} {printable(session.caller.args)}" if session.caller
              else "caller gone")
    lines = [f"session {session.id} (PID {session.pid}): {printable(session.user)} via "
             f"{session.service}, started {_when(session.started)}, "
             f"{len(session.members)} processes, {caller}"]
    pids = {m.process.pid for m in session.members}
    children: Dict[int, List[Member]] = {}
    roots = []
    for member in session.members:
        if member.process.ppid in pids:
            children.setdefault(member.process.ppid, []).append(member)
        else:
            roots.append(member)

    def walk(member: Member, prefix: str, connector: str, below: str) -> None:
        lines.append(f"{prefix}{connector}{member.process.pid} [{member.session_pid}] "
                     f"{printable(member.user)}: {printable(member.process.args)}")
        kids = children.get(member.process.pid, [])
        for index, kid in enumerate(kids):
            last = index == len(kids) - 1
            walk(kid, prefix + below, "└─ " if last else "├─ ", "   " if last else "│  ")

    for root in roots:
        walk(root, "  ", "", "")
    return "\n".join(lines) + "\n"


def _module_lines(module: ModuleFacts) -> List[str]:
    built = module.built
    lines = [f"module:    pam-unshare {module.version}, built "
             + (f"{built.path} (sha256 {(built.sha256 or '')[:16]})" if built.path
                else "module missing (reinstall the package: pip install .)")]
    installed = module.installed
    if installed is None:
        lines.append("           no PAM module directory found (no pam_unix.so)")
    elif not installed.present:
        lines.append(f"           not installed in {module.module_dir} (pam-unshare install)")
    else:
        same = ("same as the built module" if installed.same_as_built
                else f"DIFFERS from the built module (sha256 {(installed.sha256 or '')[:16]})")
        lines.append(f"           installed {installed.path}: {same}")
        if installed.problem:
            lines.append(f"           PROBLEM: {installed.problem}")
    return lines


def _enabled_lines(status: Status) -> List[str]:
    lines = [f"enabled in {status.pam_dir}:"]
    if not status.enabled:
        lines.append("  (no service)")
    rows = []
    for entry in status.enabled:
        where = f"through {entry.via}" if entry.via else f"line {entry.line}"
        shown = " ".join(entry.options) or "(defaults)"
        if entry.module != pamd.MODULE_TOKEN:
            shown += f"  [module {entry.module}]"
        rows.append(("  " + entry.service, where, shown))
    if rows:
        lines += table(rows).splitlines()
    return lines


def _kernel_line(kernel: KernelSupport) -> str:
    release = "ok" if kernel.release_ok else "TOO OLD, 5.8 or later needed"
    limit = kernel.max_pid_namespaces
    return (f"kernel:    {kernel.release} ({release}), user.max_pid_namespaces "
            f"{'unknown' if limit is None else limit}{' (DISABLED)' if limit == 0 else ''}, "
            f"/ is {kernel.root_propagation}, new PID+mount namespaces: {kernel.unshare}")


def status_text(status: Status) -> str:
    lines = _module_lines(status.module)
    lines += _enabled_lines(status)
    lines.append(_kernel_line(status.kernel))
    if status.uncovered:
        lines.append("not covered (these start user sessions outside any namespace):")
        lines += table([("  " + u.service, u.what, f"close: {u.close}")
                        for u in status.uncovered]).splitlines()
    else:
        lines.append("coverage:  every session-opening service on this host runs the module")
    problems, warnings = len(status.problems), len(status.warnings)
    if problems or warnings:
        lines.append(f"check:     {problems} problem{'s' * (problems != 1)}, {warnings} "
                     f"warning{'s' * (warnings != 1)} (pam-unshare check lists them)")
    else:
        lines.append("check:     no problems")
    return "\n".join(lines) + "\n"
