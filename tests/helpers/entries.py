"""The ways a user gets a session: each turns (user, shell command) into a root command line."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from helpers.sshd import Sshd

PAM_SESSION = str(Path(__file__).resolve().parent / "pam_session.py")
IN_PTY = str(Path(__file__).resolve().parent / "in_pty.py")
TEST_SERVICE = "pam-unshare-test"


@dataclass(frozen=True)
class Entry:
    name: str
    argv: Callable[[str, str], List[str]]

    def command(self, user: str, shell_command: str) -> str:
        return shlex.join(self.argv(user, shell_command))


def _in_pty(argv: List[str]) -> List[str]:
    # A terminal for the command, so that sudo (use_pty) runs its monitor and a pty.
    return [sys.executable, IN_PTY, *argv]


def make_entries(sshd: Sshd) -> Dict[str, Entry]:
    entries = [
        Entry("su", lambda user, cmd: ["su", user, "-c", cmd]),
        Entry("su-login", lambda user, cmd: ["su", "-", user, "-c", cmd]),
        Entry("sudo-nopty", lambda user, cmd: ["sudo", "-u", user, "--", "sh", "-c", cmd]),
        Entry("sudo-pty", lambda user, cmd: _in_pty(["sudo", "-u", user, "--", "sh", "-c", cmd])),
        Entry("ssh-command", lambda user, cmd: sshd.command(user, cmd)),
        Entry("ssh-pty", lambda user, cmd: sshd.command(user, cmd, tty=True)),
        Entry("python-pam", lambda user, cmd: [sys.executable, PAM_SESSION, TEST_SERVICE, user,
                                               cmd]),
    ]
    return {entry.name: entry for entry in entries}


ENTRY_NAMES = ["su", "su-login", "sudo-nopty", "sudo-pty", "ssh-command", "ssh-pty", "python-pam"]
