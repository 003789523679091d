"""The session's PID 1 as a process seen from this machine: it holds nothing of its caller, has
no privilege and sleeps in the kernel while idle."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from typing import Iterator, NamedTuple, Set

import pytest
from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.entries import ENTRY_NAMES, Entry

from pam_unshare.proc import INIT_COMM


class BlockedSession(NamedTuple):
    process: subprocess.Popen
    caller_pipes: Set[int]  # inodes of the pipes the test gave the entry command
    namespace: int
    init: hostprocs.HostProcess
    sleeper: hostprocs.HostProcess


@contextlib.contextmanager
def blocked_session(entry: Entry, user: str) -> Iterator[BlockedSession]:
    """A session whose shell waits in `sleep 600`, started in the background; on leaving the
    block the sleep is killed, the session ends and its PID 1 must be gone within 30 s."""
    tag = hostprocs.new_tag()
    process = subprocess.Popen(
        entry.command(user, f"{hostprocs.tag_assignment(tag)} sleep 600"), shell=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin and process.stdout and process.stderr
    pipes = {os.fstat(end.fileno()).st_ino
             for end in (process.stdin, process.stdout, process.stderr)}
    namespace = None
    try:
        sleepers = hostprocs.wait_for(lambda: [
            found for found in hostprocs.tagged(tag)
            if hostprocs.cmdline(found.pid) == ["sleep", "600"]])
        assert len(sleepers) == 1, (
            f"{entry.name}: the session did not start: {process.poll()} "
            f"{process.stderr.read().decode(errors='replace') if process.poll() else ''}")
        namespace = hostprocs.pid_namespace(sleepers[0].pid)
        known_at = hostprocs.now_ticks()
        assert namespace is not None
        init = hostprocs.namespace_init(namespace)
        assert init is not None and init.comm == INIT_COMM, (
            f"{entry.name}: no session init for {sleepers[0]}: {init}")
        yield BlockedSession(process, pipes, namespace, init, sleepers[0])

        hostprocs.kill(sleepers[0])
        process.communicate(timeout=60)
        assert hostprocs.wait_for(lambda: not hostprocs.is_present(init)), (
            f"{entry.name}: PID 1 is still there 30 s after the session ended")
    finally:
        if namespace is not None:
            hostprocs.kill_namespace(namespace, known_at)
        for found in hostprocs.tagged(tag):
            hostprocs.kill(found)
        if process.poll() is None:
            process.kill()
        process.communicate()


# What PID 1 may hold: its lifeline (a pipe), its signalfd, pidfds of watched processes.
# Besides pipes and its signalfd and pidfds, the user's session quota (max_sessions), whose lock
# it holds for as long as it lives.
ALLOWED_FD = re.compile(r"pipe:\[(\d+)\]|anon_inode:\[(signalfd|pidfd)\]|pidfd:.*"
                        r"|/run/pam_unshare/user-\d+\.sessions")


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_init_keeps_no_inherited_descriptor(entries, users, entry_name):
    with blocked_session(entries[entry_name], users.alice) as session:
        fds = hostprocs.fd_targets(session.init.pid)
        unexpected = {fd: target for fd, target in fds.items()
                      if not ALLOWED_FD.fullmatch(target)}
        assert unexpected == {}, f"{entry_name}: PID 1 holds {fds}"
        pipes = {int(match.group(1)) for match in map(ALLOWED_FD.fullmatch, fds.values())
                 if match and match.group(1)}
        assert len(pipes) <= 1, f"{entry_name}: more pipes than the lifeline: {fds}"
        assert not pipes & session.caller_pipes, (
            f"{entry_name}: PID 1 holds the caller's stdin, stdout or stderr: {fds}")


@pytest.mark.parametrize("entry_name", ["su", "ssh-command"])
def test_init_is_unprivileged_and_idle(entries, users, entry_name):
    with blocked_session(entries[entry_name], users.alice) as session:
        status = hostprocs.status_fields(session.init.pid)
        for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert status[field] == "0000000000000000", f"{entry_name}: {field} {status[field]}"
        assert status["NoNewPrivs"] == "1"
        assert status["Uid"].split() == ["0", "0", "0", "0"]

        before = hostprocs.refresh(session.init)
        time.sleep(3)
        after = hostprocs.refresh(session.init)
        assert before is not None and after is not None
        assert after.state == "S", f"{entry_name}: idle PID 1 is in state {after.state}"
        assert after.cpu_ticks == before.cpu_ticks, (
            f"{entry_name}: idle PID 1 used {after.cpu_ticks - before.cpu_ticks} ticks in 3 s")
