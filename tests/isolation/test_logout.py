"""Logging out: the caller returns at once and the session leaves nothing behind.

on_logout=linger (the default) lets a job started with nohup outlive the login, in its namespace
under the session's PID 1, which leaves once the last such job is gone; on_logout=kill ends the
whole namespace at logout.
"""

from __future__ import annotations

import os
import re
import time
from typing import List

import pytest
from helpers.entries import ENTRY_NAMES

from isolation import hostprocs

MODES = {"linger": (), "kill": ("on_logout=kill",)}
NOHUP_SLEEP = ["sleep", "300"]
QUICK_ROUNDS = 10


def host_namespace() -> int:
    namespace = hostprocs.pid_namespace(os.getpid())
    assert namespace is not None
    return namespace


def module_failures(lines: List[str]) -> List[str]:
    return [line for line in lines if "pam_unshare" in line and "failed" in line]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_logout_is_prompt_and_leaves_nothing(host, entries, users, pam_sandbox, entry_name,
                                             mode):
    tag = hostprocs.new_tag()
    session = entries[entry_name].command(
        users.alice,
        f"{hostprocs.survive_hangup(entry_name)}readlink /proc/self/ns/pid; "
        f"{hostprocs.tag_assignment(tag)} nohup sleep 300 >/dev/null 2>&1 & "
        "kill -0 $! && echo started",
    )
    namespace = None
    mark = pam_sandbox.syslog.mark()
    try:
        with pam_sandbox.options(*MODES[mode]):
            started = time.monotonic()
            result = host.run(f"timeout -k 5 90 {session}")
            elapsed = time.monotonic() - started
        returned = hostprocs.now_ticks()
        assert elapsed < 60, f"{entry_name}/{mode}: logout took {elapsed:.1f} s"
        assert result.rc == 0, f"{entry_name}/{mode}: {result.stdout} {result.stderr}"
        assert "started" in result.stdout, result.stdout
        namespace = hostprocs.namespace_id(result.stdout)
        known_at = hostprocs.now_ticks()
        assert namespace != host_namespace()

        if mode == "linger":
            sleepers = hostprocs.wait_for(lambda: [
                process for process in hostprocs.tagged(tag)
                if hostprocs.cmdline(process.pid) == NOHUP_SLEEP])
            assert len(sleepers) == 1, f"{entry_name}: the nohup'd sleep did not outlive logout"
            assert hostprocs.pid_namespace(sleepers[0].pid) == namespace
            init = hostprocs.namespace_init(namespace)
            assert init is not None and init.comm == hostprocs.INIT_COMM, (
                f"{entry_name}: the sleep's namespace has no session init: {init}")
            assert hostprocs.cmdline(init.pid) == ["pam_unshare-init", "linger"]
            hostprocs.kill(sleepers[0])

        left = hostprocs.wait_until_none(lambda: hostprocs.tagged(tag) + hostprocs.in_namespace(
            namespace, started_by=returned))
        assert left == [], (
            f"{entry_name}/{mode}: 30 s after "
            f"{'logout' if mode == 'kill' else 'its last job was killed'}, the session still has "
            f"{[(process, hostprocs.cmdline(process.pid)) for process in left]}")
        failures = module_failures(pam_sandbox.syslog.lines(mark))
        assert failures == [], f"{entry_name}/{mode}: the module logged {failures}"
    finally:
        for process in hostprocs.tagged(tag):
            hostprocs.kill(process)
        if namespace is not None:
            hostprocs.kill_namespace(namespace, known_at)


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_linger_without_background_job_leaves_no_init(host, entries, users, entry_name):
    session = entries[entry_name].command(
        users.alice, "readlink /proc/self/ns/pid; tr '\\0' ' ' </proc/1/cmdline; echo")
    inits_before = len(hostprocs.session_inits())
    result = host.run(f"for i in $(seq {QUICK_ROUNDS}); do {session} </dev/null || exit; done")
    returned = hostprocs.now_ticks()
    assert result.rc == 0, f"{entry_name}: {result.stdout} {result.stderr}"
    namespaces = [hostprocs.namespace_id(line) for line in result.stdout.splitlines()
                  if line.startswith("pid:[")]
    assert len(set(namespaces)) == QUICK_ROUNDS, result.stdout
    assert host_namespace() not in namespaces
    assert len(re.findall(r"pam_unshare-init linger", result.stdout)) == QUICK_ROUNDS

    left = hostprocs.wait_until_none(lambda: [
        process for namespace in namespaces
        for process in hostprocs.in_namespace(namespace, started_by=returned)])
    assert left == [], (
        f"{entry_name}: 30 s after {QUICK_ROUNDS} sessions ended, their namespaces still hold "
        f"{left} (running session inits on this machine: {inits_before} before, "
        f"{len(hostprocs.session_inits())} now)")
