"""The session is ready before the shell runs, and is never cut short.

/proc must be the session's own from the shell's first instruction on (the module may return from
pam_open_session only once PID 1 has mounted it), and PID 1 must never leave while the session
still runs (its exit would make the kernel kill the shell). Each check runs many quick sessions
in one shell loop on the host, so that a rare race shows up.
"""

from __future__ import annotations

import collections
import shlex

import pytest

from isolation.targets import rounds

# Sessions per way of logging in; su is the fastest, so it gets the most.
READY_ROUNDS = {"su": 200, "sudo-nopty": 50, "ssh-command": 50, "python-pam": 50}
BACK_TO_BACK = 1000
# A thousand logins back to back, a hundred on the emulated VM, where that takes most of a minute
# and shows nothing the containers' native thousand do not (tests/isolation/conftest.py; it runs
# there with PU_ISOLATION_FULL=1). /proc ready at the first instruction runs everywhere.
NATIVE_SPEED_ONLY = ("test_no_session_is_killed_early",)


def session_loop(command: str, rounds: int) -> str:
    """Shell loop running COMMAND ROUNDS times; prints its output and, after a failing run,
    "rc=N"."""
    return (f"for i in $(seq {rounds}); do {command} </dev/null 2>&1; rc=$?; "
            f'[ $rc -eq 0 ] || echo "rc=$rc"; done')


def module_complaints(lines: list[str]) -> list[str]:
    return [line for line in lines if "pam_unshare" in line]


@pytest.mark.parametrize("entry_name", sorted(READY_ROUNDS))
def test_proc_is_ready_at_the_first_instruction(target, entry_name):
    count = rounds(target, READY_ROUNDS[entry_name])
    command = target.entries[entry_name].command("pu_alice", "cat /proc/1/comm")
    mark = target.log_mark()
    result = target.host.run(session_loop(command, count))
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    seen = collections.Counter(lines)
    others = {line: count for line, count in seen.items() if line != "pam_unshare"}
    assert seen["pam_unshare"] == count and not others, (
        f"{target.name}/{entry_name}: {seen['pam_unshare']} of {count} sessions saw their own "
        f"/proc at once; other output: {others}; stderr: {result.stderr[-2000:]}; "
        f"log: {module_complaints(target.log_lines(mark))}"
    )


@pytest.mark.slow
def test_no_session_is_killed_early(target):
    command = shlex.join(["su", "pu_alice", "-c", "true"])
    count = rounds(target, BACK_TO_BACK)
    mark = target.log_mark()
    result = target.host.run(
        f"fails=0; for i in $(seq {count}); do {command} </dev/null >/dev/null 2>&1; "
        f'rc=$?; if [ $rc -ne 0 ]; then fails=$((fails+1)); echo "session $i: rc=$rc"; fi; '
        f'done; echo "failures=$fails"'
    )
    assert result.rc == 0, result.stderr
    failures = int(result.stdout.strip().splitlines()[-1].split("=")[1])
    rcs = collections.Counter(line.split("rc=")[1] for line in result.stdout.splitlines()
                              if "rc=" in line)
    assert failures == 0, (
        f"{target.name}: {failures} of {count} back-to-back `su -c true` failed (exit "
        f"codes: {dict(rcs)}); log: {module_complaints(target.log_lines(mark))[:20]}"
    )
