"""Logging out: the caller returns at once and the session leaves nothing behind.

on_logout=linger (the default) lets a job started with nohup outlive the login, in its namespace
under the session's PID 1, which leaves once the last such job is gone; on_logout=kill ends the
whole namespace at logout.
"""

from __future__ import annotations

import re
import time
from typing import List

import pytest
from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.entries import ISOLATION_ENTRY_NAMES as ENTRY_NAMES

from pam_unshare.proc import INIT_COMM

MODES = {"linger": (), "kill": ("on_logout=kill",)}
NOHUP_SLEEP = ("sleep", "300")
QUICK_ROUNDS = 10


def module_failures(lines: List[str]) -> List[str]:
    return [line for line in lines if "pam_unshare" in line and "failed" in line]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_logout_is_prompt_and_leaves_nothing(target, entry_name, mode):
    view = target.view
    where = f"{target.name}/{entry_name}/{mode}"
    tag = hostprocs.new_tag()
    session = target.entries[entry_name].command(
        "pu_alice",
        f"{hostprocs.survive_hangup(entry_name)}readlink /proc/self/ns/pid; "
        f"{hostprocs.tag_assignment(tag)} nohup sleep 300 >/dev/null 2>&1 & "
        "kill -0 $! && echo started",
    )
    namespace = None
    mark = target.log_mark()
    try:
        with target.options(*MODES[mode]):
            started = time.monotonic()
            result = target.host.run(f"timeout -k 5 90 {session}")
            elapsed = time.monotonic() - started
        returned = view.now_ticks()
        assert elapsed < 60, f"{where}: logout took {elapsed:.1f} s"
        assert result.rc == 0, f"{where}: {result.stdout} {result.stderr}"
        assert "started" in result.stdout, result.stdout
        namespace = hostprocs.namespace_id(result.stdout)
        known_at = view.now_ticks()
        assert namespace != view.snapshot().own_pidns

        if mode == "linger":
            sleepers = view.wait_for(lambda snap: [
                process for process in snap.tagged(tag) if process.cmdline == NOHUP_SLEEP])
            assert len(sleepers) == 1, f"{where}: the nohup'd sleep did not outlive logout"
            assert sleepers[0].pidns == namespace
            init = view.snapshot().namespace_init(namespace)
            assert init is not None and init.comm == INIT_COMM, (
                f"{where}: the sleep's namespace has no session init: {init}")
            assert init.cmdline == ("pam_unshare-init", "linger")
            view.kill(sleepers[0])

        left = view.wait_until_none(lambda snap: snap.tagged(tag) + snap.in_namespace(
            namespace, started_by=returned))
        assert left == [], (
            f"{where}: 30 s after "
            f"{'logout' if mode == 'kill' else 'its last job was killed'}, the session still has "
            f"{[(process.pid, process.cmdline) for process in left]}")
        failures = module_failures(target.log_lines(mark))
        assert failures == [], f"{where}: the module logged {failures}"
    finally:
        view.kill_tagged(tag)
        if namespace is not None:
            view.kill_namespace(namespace, known_at)


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_linger_without_background_job_leaves_no_init(target, entry_name):
    view = target.view
    where = f"{target.name}/{entry_name}"
    session = target.entries[entry_name].command(
        "pu_alice", "readlink /proc/self/ns/pid; tr '\\0' ' ' </proc/1/cmdline; echo")
    before = view.snapshot()
    result = target.host.run(
        f"for i in $(seq {QUICK_ROUNDS}); do {session} </dev/null || exit; done")
    returned = view.now_ticks()
    assert result.rc == 0, f"{where}: {result.stdout} {result.stderr}"
    namespaces = [hostprocs.namespace_id(line) for line in result.stdout.splitlines()
                  if line.startswith("pid:[")]
    # Not necessarily ten different numbers: a namespace that is gone may lend its number to
    # the next one (the kernel hands out the lowest free inode number).
    assert len(namespaces) == QUICK_ROUNDS, result.stdout
    assert before.own_pidns not in namespaces
    assert len(re.findall(r"pam_unshare-init linger", result.stdout)) == QUICK_ROUNDS

    left = view.wait_until_none(lambda snap: [
        process for namespace in namespaces
        for process in snap.in_namespace(namespace, started_by=returned)])
    assert left == [], (
        f"{where}: 30 s after {QUICK_ROUNDS} sessions ended, their namespaces still hold "
        f"{left} (running session inits on the host: {len(before.session_inits())} before, "
        f"{len(view.snapshot().session_inits())} now)")
