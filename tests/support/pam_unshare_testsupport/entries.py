"""The ways a user gets a session: each turns (user, shell command) into a root command line
that runs on the test host.

The same entries serve every host: what differs is where the helper scripts and python-pam live
there and how ssh reaches the host's own sshd (Tools).
"""

from __future__ import annotations

import base64
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

HELPERS = Path(__file__).resolve().parent
TEST_SERVICE = "pam-unshare-test"
# Files the entries run on the host (copied to remote hosts next to each other).
HELPER_FILES = ("in_pty.py", "pam_session.py")
IN_PTY = str(HELPERS / "in_pty.py")


@dataclass(frozen=True)
class Entry:
    name: str
    argv: Callable[[str, str], List[str]]

    def command(self, user: str, shell_command: str) -> str:
        return shlex.join(self.argv(user, shell_command))


@dataclass(frozen=True)
class Tools:
    """Where the entries find their helpers on the host."""

    python: List[str]  # the interpreter, with python-pam importable
    helpers: str  # directory holding HELPER_FILES
    ssh: Callable[[str, str, bool], List[str]]  # (user, command, tty) -> argv


def local_tools(ssh: Callable[[str, str, bool], List[str]]) -> Tools:
    return Tools(python=[sys.executable], helpers=str(HELPERS), ssh=ssh)


def remote_tools(helpers: str) -> Tools:
    """A provisioned host (hosts/provision-test-host): its sshd on loopback port 22 takes
    root's key pu_inner for the test users; python-pam was copied into HELPERS."""
    def ssh(user: str, command: str, tty: bool) -> List[str]:
        return ["ssh", "-F", "/dev/null", "-i", "/root/.ssh/pu_inner",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", *(["-tt"] if tty else ["-T"]),
                f"{user}@127.0.0.1", command]
    return Tools(python=["env", f"PYTHONPATH={helpers}", "python3"], helpers=helpers, ssh=ssh)


def _survive_login_shell(command: str) -> str:
    """COMMAND in a form that reaches sh intact through sudo -i, which hands its arguments to
    the login shell with a backslash before every special character: a newline becomes a line
    continuation there, and disappears."""
    encoded = base64.b64encode(command.encode()).decode()
    return f'eval "$(echo {encoded} | base64 -d)"'


def make_entries(tools: Tools) -> Dict[str, Entry]:
    def in_pty(argv: List[str]) -> List[str]:
        # A terminal for the command, so that sudo (use_pty) runs its monitor and a pty.
        return [*tools.python, f"{tools.helpers}/in_pty.py", *argv]

    entries = [
        Entry("su", lambda user, cmd: ["su", user, "-c", cmd]),
        Entry("su-login", lambda user, cmd: ["su", "-", user, "-c", cmd]),
        Entry("sudo-nopty", lambda user, cmd: ["sudo", "-u", user, "--", "sh", "-c", cmd]),
        Entry("sudo-pty", lambda user, cmd: in_pty(["sudo", "-u", user, "--", "sh", "-c", cmd])),
        # sudo -i: the PAM service sudo-i, a login shell that runs the command.
        Entry("sudo-login", lambda user, cmd: ["sudo", "-i", "-u", user, "--", "sh", "-c",
                                               _survive_login_shell(cmd)]),
        # sudo-rs (Debian 13): the same PAM service sudo, its own pty handling.
        Entry("sudo-rs-nopty", lambda user, cmd: ["sudo-rs", "-u", user, "--", "sh", "-c",
                                                  cmd]),
        Entry("sudo-rs-pty", lambda user, cmd: in_pty(["sudo-rs", "-u", user, "--", "sh", "-c",
                                                       cmd])),
        Entry("ssh-command", lambda user, cmd: tools.ssh(user, cmd, False)),
        Entry("ssh-pty", lambda user, cmd: tools.ssh(user, cmd, True)),
        Entry("python-pam", lambda user, cmd: [*tools.python, f"{tools.helpers}/pam_session.py",
                                               TEST_SERVICE, user, cmd]),
    ]
    return {entry.name: entry for entry in entries}


ENTRY_NAMES = ["su", "su-login", "sudo-nopty", "sudo-pty", "sudo-login", "ssh-command", "ssh-pty",
               "python-pam"]
# Entry paths only some hosts have (the isolation suite runs them where the tier lists them,
# hosts/tiers.py, and deselects them elsewhere).
SUDO_RS_ENTRY_NAMES = ["sudo-rs-nopty", "sudo-rs-pty"]
ISOLATION_ENTRY_NAMES = ENTRY_NAMES + SUDO_RS_ENTRY_NAMES
