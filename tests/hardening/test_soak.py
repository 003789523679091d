"""Soak: thousands of sequential sessions, then nothing may be left.

Each session prints the identity of its PID 1 (its PID namespace and start time); after the run,
none of those inits and no process in any of those namespaces may remain, the mount table is as
it was, and every session was namespaced. A long-lived python-pam process that opens and closes
sessions (in children) keeps its descriptors and memory flat, and each child holds exactly the
descriptors after pam_close_session that it held before pam_open_session.

Default (CI): 1,000 su, 100 ssh, 300 sudo, 300 python-pam sessions. PU_HARDENING=full: 10,000 su,
2,000 ssh, 2,000 sudo, 2,000 python-pam.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
from pam_unshare_testsupport.entries import TEST_SERVICE

from hardening.conftest import FULL, figure
from hardening.faults import (
    INIT_PROBE,
    SessionInit,
    inits_in_output,
    mount_table,
    wait_no_leftovers,
)

COUNTS = {"su": 10_000, "sudo": 2_000, "ssh": 2_000, "python-pam": 2_000} if FULL else \
    {"su": 1000, "sudo": 300, "ssh": 100, "python-pam": 300}
PAM_LOOP = str(Path(__file__).resolve().parent / "pam_loop.py")
# Growth of the long-lived process allowed between its first and last sample (after warm-up):
# allocator noise, far below what one leaked descriptor or buffer per session would add up to.
RSS_SLACK_KIB = 1024

soaked: List[int] = []


@pytest.fixture(scope="module", autouse=True)
def _figures() -> None:
    yield
    figure("soak sessions", sum(soaked))


def soak(argv: List[str], count: int, caller: str) -> List[SessionInit]:
    inits: List[SessionInit] = []
    failures: List[str] = []
    started = time.monotonic()
    for index in range(count):
        result = subprocess.run(["timeout", "-k", "5", "60", *argv], capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, errors="replace")
        found = inits_in_output(result.stdout)
        if result.returncode != 0 or len(found) != 1:
            failures.append(f"session {index}: rc={result.returncode} {result.stdout!r} "
                            f"{result.stderr!r}")
            if len(failures) > 5:
                break
        inits.extend(found)
    elapsed = time.monotonic() - started
    figure(f"soak {caller}", f"{count} sessions in {elapsed:.0f} s, {len(failures)} failed")
    assert not failures, failures
    return inits


def check_nothing_left(inits: List[SessionInit], mounts_before: List[str], caller: str) -> None:
    left = wait_no_leftovers(inits, timeout=30)
    figure(f"soak {caller} leftovers (processes, PID namespaces)", len(left))
    assert left == [], left[:20]
    assert mount_table() == mounts_before, "the mount table changed"
    # Each session got a namespace of its own (scope=session): as many inits as sessions.
    assert len({(init.pidns, init.start) for init in inits}) == len(inits)


@pytest.mark.parametrize("caller", ["su", "sudo", "ssh"])
def test_sequential_sessions_leave_nothing(pam_sandbox, users, entries, caller):
    count = COUNTS[caller]
    argv = {
        "su": ["su", users.alice, "-c", INIT_PROBE],
        "sudo": ["sudo", "-u", users.alice, "--", "sh", "-c", INIT_PROBE],
        "ssh": entries["ssh-command"].argv(users.alice, INIT_PROBE),
    }[caller]
    mounts_before = mount_table()
    inits = soak(argv, count, caller)
    soaked.append(len(inits))
    check_nothing_left(inits, mounts_before, caller)


def test_a_long_lived_pam_process_does_not_grow(pam_sandbox, users):
    count = COUNTS["python-pam"]
    mounts_before = mount_table()
    started = time.monotonic()
    result = subprocess.run([sys.executable, PAM_LOOP, TEST_SERVICE, users.alice, str(count),
                             INIT_PROBE], capture_output=True, text=True, timeout=3600,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    sessions = [{**r["session"], "child": r["child"]} for r in records if "session" in r]
    samples = [r["sample"] for r in records if "sample" in r]
    assert len(sessions) == count
    bad = [s for s in sessions if s["open_rc"] != 0 or s["status"] != 0 or s["child"] != 0]
    assert not bad, bad[:5]
    # The opener gives back every descriptor the module took: pidfd and lifeline.
    leaked = [s for s in sessions if s["fds_closed"] != s["fds_before"]]
    assert not leaked, leaked[:5]
    assert all(s["fds_open"] > s["fds_before"] for s in sessions), "no session state held?"
    inits = [init for s in sessions for init in inits_in_output(s["output"])]
    assert len(inits) == count
    soaked.append(count)
    figure("soak python-pam", f"{count} sessions in {time.monotonic() - started:.0f} s; "
           f"parent fds {samples[0]['fds']} -> {samples[-1]['fds']}, "
           f"VmRSS {samples[0]['rss_kib']} -> {samples[-1]['rss_kib']} KiB")
    # The long-lived parent: flat after the first sample.
    assert len({sample["fds"] for sample in samples}) == 1, samples
    assert samples[-1]["rss_kib"] - samples[1]["rss_kib"] <= RSS_SLACK_KIB, samples
    check_nothing_left(inits, mounts_before, "python-pam")
