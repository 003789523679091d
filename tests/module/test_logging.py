"""What a successful session leaves in syslog: without `debug` nothing more severe than LOG_INFO
(a healthy login must not raise alerts), with `debug` each step at LOG_DEBUG: starting, the
init's pid, closing."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import pytest
from conftest import PamSandbox
from pam_unshare_testsupport.entries import Entry
from testinfra.host import Host

from pam_unshare import __version__

LOG_INFO = 6
LOG_DEBUG = 7
# A syslog datagram: "<PRI>timestamp tag: message", PRI = facility * 8 + severity.
DATAGRAM = re.compile(r"^<(\d+)>(.*)$")
ENTRY_NAMES = ["su", "sudo-nopty", "ssh-command"]
PROBE = "echo comm:$(cat /proc/1/comm)"
# How long to wait for the caller to close the session after the client has gone (sshd closes
# it in its monitor, after ssh has returned); a deadline, not a measurement.
CLOSE_DEADLINE = 10.0


@dataclass(frozen=True)
class Message:
    severity: int
    text: str


def parse(line: str) -> Message:
    match = DATAGRAM.match(line)
    assert match, f"not a syslog datagram: {line!r}"
    return Message(int(match.group(1)) % 8, match.group(2))


def module_messages(lines: List[str]) -> List[Message]:
    return [parse(line) for line in lines if "pam_unshare(" in line]


def wait_for_lines(pam_sandbox: PamSandbox, since: int,
                   done: Callable[[List[str]], bool]) -> List[str]:
    """The syslog lines since SINCE once DONE accepts them; fails at the deadline."""
    deadline = time.monotonic() + CLOSE_DEADLINE
    while True:
        lines = pam_sandbox.syslog.lines(since)
        if done(lines):
            return lines
        assert time.monotonic() < deadline, f"syslog never got what the test waits for: {lines}"


def closed(user: str) -> Callable[[List[str]], bool]:
    """The caller's stack has closed USER's session (pam_unix, which runs before our line)."""
    return lambda lines: any(f"session closed for user {user}" in line for line in lines)


def run_session(host: Host, pam_sandbox: PamSandbox, entry: Entry, user: str,
                done: Callable[[List[str]], bool]) -> List[Message]:
    """Runs a namespaced session of USER through ENTRY; the module's messages, once DONE."""
    since = pam_sandbox.syslog.mark()
    result = host.run(entry.command(user, PROBE))
    assert result.rc == 0, f"{entry.name}: {result.stderr}"
    assert "comm:pam_unshare" in result.stdout, f"{entry.name} was not namespaced"
    return module_messages(wait_for_lines(pam_sandbox, since, done))


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_a_successful_session_logs_nothing_above_info(host, pam_sandbox, entries: Dict[str, Entry],
                                                      users, entry_name):
    messages = run_session(host, pam_sandbox, entries[entry_name], users.alice,
                           closed(users.alice))
    loud = [message for message in messages if message.severity < LOG_INFO]
    assert loud == [], f"{entry_name}: a healthy session logged {loud}"


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_without_debug_the_steps_are_not_logged(host, pam_sandbox, entries: Dict[str, Entry],
                                                users, entry_name):
    messages = run_session(host, pam_sandbox, entries[entry_name], users.alice,
                           closed(users.alice))
    chatter = [message for message in messages if message.severity == LOG_DEBUG]
    assert chatter == [], f"{entry_name}: debug output without the debug option: {chatter}"


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_with_debug_each_step_is_logged_at_debug(host, pam_sandbox, entries: Dict[str, Entry],
                                                 users, entry_name):
    user = users.alice

    def session_closed(lines: List[str]) -> bool:
        return any("pam_unshare(" in line and "closing the session" in line for line in lines)

    with pam_sandbox.options("debug"):
        messages = run_session(host, pam_sandbox, entries[entry_name], user, session_closed)
    texts = [message.text for message in messages]
    assert all(message.severity == LOG_DEBUG for message in messages), messages

    def index_of(pattern: str) -> int:
        found = [i for i, text in enumerate(texts) if re.search(pattern, text)]
        assert len(found) == 1, f"{entry_name}: {pattern!r} logged {len(found)} times: {texts}"
        return found[0]

    opening = index_of(rf"pam_unshare {re.escape(__version__)}: opening a session for user "
                       rf"{user}$")
    starting = index_of(rf"starting a PID namespace for user {user}$")
    running = index_of(rf"user {user}: session init runs as pid (\d+), /proc mounted")
    closing = index_of(r"closing the session of init pid (\d+) \(linger\)$")
    assert opening < starting < running < closing, texts
    init_pid = re.search(r"runs as pid (\d+)", texts[running])
    closed_pid = re.search(r"init pid (\d+)", texts[closing])
    assert init_pid and closed_pid and init_pid.group(1) == closed_pid.group(1), texts
    assert int(init_pid.group(1)) > 1, "the pid logged is the host's, never 1"
