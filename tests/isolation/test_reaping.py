"""The session's PID 1 reaps: no zombie survives in a session, and a caller capturing a session's
output gets EOF at once even while the session lingers."""

from __future__ import annotations

import re
import time

import pytest
from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.entries import ISOLATION_ENTRY_NAMES as ENTRY_NAMES

from isolation.targets import rounds
from pam_unshare.proc import INIT_COMM

ORPHANS = 200
LATE_ORPHANS = 20
# Inside a session: a zombie whose parent never waits (a control: zombies are visible), then
# ORPHANS orphans that exit at once and LATE_ORPHANS that exit after their parent is gone; then
# up to 30 s until no zombie and no late orphan is left.
ORPHAN_SCRIPT = """
zombies() {{ ps -e -o stat= | grep -c '^Z'; }}
unsettled() {{ ps -e -o stat=,comm= | grep -c -e '^Z' -e ' sleep$'; }}
sh -c 'true & exec sleep 60' & holder=$!
i=0; while [ $i -lt 300 ]; do n=$(zombies); [ "$n" -ge 1 ] && break; sleep 0.1; i=$((i+1)); done
echo control=$n
kill $holder; wait $holder
for i in $(seq {orphans}); do sh -c 'true &'; done
for i in $(seq {late_orphans}); do sh -c 'sleep 0.5 &'; done
i=0; while [ $i -lt 300 ] && [ "$(unsettled)" -ne 0 ]; do sleep 0.1; i=$((i+1)); done
echo zombies=$(zombies)
ps -e -o pid=,stat=,comm=
"""


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_orphans_are_reaped(target, entry_name):
    orphans, late_orphans = rounds(target, ORPHANS), rounds(target, LATE_ORPHANS)
    script = ORPHAN_SCRIPT.format(orphans=orphans, late_orphans=late_orphans)
    result = target.host.run(target.entries[entry_name].command("pu_alice", script))
    output = result.stdout.replace("\r", "")
    where = f"{target.name}/{entry_name}"
    assert result.rc == 0, f"{where}: rc {result.rc}: {output} {result.stderr}"
    control = re.search(r"^control=(\d+)$", output, re.MULTILINE)
    zombies = re.search(r"^zombies=(\d+)$", output, re.MULTILINE)
    assert control and zombies, output
    assert int(control.group(1)) >= 1, f"{where}: the probe does not see zombies at all: {output}"
    assert int(zombies.group(1)) == 0, (
        f"{where}: {zombies.group(1)} zombies left 30 s after {orphans + late_orphans} "
        f"orphans exited: {output}")


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_caller_gets_eof_while_the_session_lingers(target, entry_name):
    """`x=$(su USER -c 'echo hi; setsid sleep 120 ... &')` returns at once with x == hi: PID 1,
    which stays for the sleep, holds none of the caller's descriptors."""
    view = target.view
    where = f"{target.name}/{entry_name}"
    tag = hostprocs.new_tag()
    session = target.entries[entry_name].command(
        "pu_alice",
        f"{hostprocs.survive_hangup(entry_name)}echo hi; "
        f"{hostprocs.tag_assignment(tag)} setsid sleep 120 </dev/null >/dev/null 2>&1 &",
    )
    namespace = None
    try:
        started = time.monotonic()
        result = target.host.run(
            f'x=$(timeout -k 5 90 {session}); echo "rc=$?"; printf %s "$x"')
        elapsed = time.monotonic() - started
        returned = view.now_ticks()
        status, _, captured = result.stdout.partition("\n")
        assert elapsed < 60, f"{where}: the caller waited {elapsed:.1f} s for EOF"
        assert status == "rc=0", f"{where}: {result.stdout} {result.stderr}"
        assert captured.replace("\r", "") == "hi", f"{where}: x={captured!r}"

        sleepers = view.wait_for(lambda snap: [
            process for process in snap.tagged(tag) if process.cmdline == ("sleep", "120")])
        assert len(sleepers) == 1, f"{where}: the session's sleep is not running"
        sleeper = sleepers[0]
        assert sleeper.nested, f"{where}: the sleep runs outside any session: {sleeper}"
        namespace = sleeper.pidns
        known_at = view.now_ticks()
        assert namespace is not None
        init = view.snapshot().namespace_init(namespace)
        assert init is not None and init.comm == INIT_COMM, (
            f"{where}: the sleep's namespace has no session init: {init}")

        view.kill(sleeper)
        left = view.wait_until_none(
            lambda snap: snap.in_namespace(namespace, started_by=returned))
        assert left == [], (
            f"{where}: 30 s after its last process was killed, the namespace still holds {left}")
    finally:
        view.kill_tagged(tag)
        if namespace is not None:
            view.kill_namespace(namespace, known_at)
