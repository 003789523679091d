"""Login latency, module off against on, in interleaved rounds; and the su failure loop.

Each round takes the paths in random order; per path it runs a block with the module off and a
block with it on, in random order, each block a run of back-to-back logins (as a loop of `su`
would). Drift in the machine's load (other jobs share it) then hits both modes alike, which is
what makes the on/off ratio fair even where absolute times are not. Paths do not alternate run
by run: a session's PID 1 leaves after its caller has returned, and that work would then be
charged to whichever path runs next (the controls `true` and `unshare` came out 3% faster "on").
"""

from __future__ import annotations

import os
import random
import select
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

from pam_unshare.proc import INIT_COMM
from pubench import procs
from pubench.env import USER, BenchEnv

MODES = ("off", "on")
# Prints the comm of the session's PID 1: "pam_unshare" when the module namespaced the session.
PROBE = "read c </proc/1/comm; echo \"$c\""


@dataclass
class Path:
    name: str
    argv: Callable[[], List[str]]
    per_round: int  # runs per mode per round
    toggled: bool  # goes through PAM (su, sudo, sshd); the others are controls


@dataclass
class PathResult:
    samples_ms: Dict[str, List[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    failures: Dict[str, int] = field(default_factory=lambda: {m: 0 for m in MODES})
    failure_messages: List[str] = field(default_factory=list)
    # per round and mode, the median: the paired view of the same comparison
    round_medians: List[Dict[str, float]] = field(default_factory=list)


def paths(env: BenchEnv, scale: int, ssh_per_round: int) -> List[Path]:
    return [
        Path("true", lambda: ["true"], scale, False),
        Path("unshare", lambda: ["unshare", "--pid", "--fork", "--mount-proc", "true"], scale,
             False),
        Path("su", lambda: env.entry_argv("su", "true"), scale, True),
        Path("sudo", lambda: ["sudo", "-u", USER, "true"], scale, True),
        Path("ssh", lambda: env.entry_argv("ssh", "true"), ssh_per_round, True),
    ]


def _timed_run(argv: List[str], timeout: float = 60.0) -> Tuple[float, int, str]:
    """Runs ARGV; its wall time in ms (until it has exited and its stderr is at EOF), its exit
    status (-1 on timeout) and its stderr.

    Not subprocess.run(timeout=...): with a timeout, Popen.wait() polls with sleeps of 0.5 ms and
    more, and whether a run ends just before or just after such a sleep then decides a large part
    of the difference being measured. Here every wait blocks in the kernel: select() on stderr,
    then poll() on a pidfd."""
    started = time.perf_counter_ns()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd="/")
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    chunks = []
    timed_out = False
    with process.stderr:
        fd = process.stderr.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                timed_out = True
                break
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
    if not timed_out:
        pidfd = os.pidfd_open(process.pid)
        try:
            waiter = select.poll()
            waiter.register(pidfd, select.POLLIN)
            timed_out = not waiter.poll(max(0.0, deadline - time.monotonic()) * 1000)
        finally:
            os.close(pidfd)
    if timed_out:
        process.kill()
        process.wait()
        return (time.perf_counter_ns() - started) / 1e6, -1, f"timed out after {timeout:g} s"
    rc = process.wait()
    elapsed = (time.perf_counter_ns() - started) / 1e6
    return elapsed, rc, b"".join(chunks).decode(errors="replace").strip()


def verify_mode(env: BenchEnv, mode: str) -> List[str]:
    """Problems with the current mode: under "on" every entry's PID 1 must be ours, under "off"
    none may be. Checked every block, so a toggle that did not take can never go unnoticed."""
    problems = []
    for entry in ("su", "sudo", "ssh"):
        result = subprocess.run(env.entry_argv(entry, PROBE), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, cwd="/", timeout=60)
        isolated = result.stdout.strip() == INIT_COMM
        if result.returncode != 0 or isolated != (mode == "on"):
            problems.append(f"{entry} under {mode}: rc {result.returncode}, PID 1 "
                            f"{result.stdout.strip()!r} {result.stderr.strip()}")
    return problems


def measure(env: BenchEnv, rounds: int, scale: int, ssh_per_round: int, seed: int,
            progress: Callable[[str], None]) -> Dict[str, object]:
    rng = random.Random(seed)
    todo = paths(env, scale, ssh_per_round)
    results = {path.name: PathResult() for path in todo}
    problems: List[str] = []
    mark = env.log_mark()
    sshd = env.sshd_pid()
    meter = procs.CpuMeter([sshd] if sshd else [])
    started = time.monotonic()
    for round_no in range(rounds):
        for mode in MODES:
            env.set_mode(mode == "on")
            problems += verify_mode(env, mode)
        medians: Dict[str, Dict[str, float]] = {path.name: {} for path in todo}
        for path in rng.sample(todo, len(todo)):
            result = results[path.name]
            for mode in rng.sample(MODES, len(MODES)):
                env.set_mode(mode == "on")
                block: List[float] = []
                for _ in range(path.per_round):
                    ms, rc, err = _timed_run(path.argv())
                    # Reap what the login left us at once, as a host's init would (untimed).
                    env.reap()
                    if rc != 0:
                        result.failures[mode] += 1
                        if len(result.failure_messages) < 10:
                            result.failure_messages.append(f"{mode} rc {rc}: {err[:300]}")
                        continue
                    result.samples_ms[mode].append(ms)
                    block.append(ms)
                if block:
                    medians[path.name][mode] = statistics.median(block)
        for name, pair in medians.items():
            results[name].round_medians.append(pair)
        progress(f"latency round {round_no + 1}/{rounds} "
                 f"({time.monotonic() - started:.0f} s)")
    return {
        "rounds": rounds,
        "machine_load": meter.stop(),
        "mode_problems": problems,
        "module_log": env.module_log(mark),
        "paths": {path.name: {"argv": path.argv(), "toggled": path.toggled,
                              "per_round": path.per_round,
                              "samples_ms": results[path.name].samples_ms,
                              "failures": results[path.name].failures,
                              "failure_messages": results[path.name].failure_messages,
                              "round_medians_ms": results[path.name].round_medians}
                  for path in todo},
    }


FAILURE_LOOP = r"""
user=$1 n=$2 i=0 fail=0
while [ "$i" -lt "$n" ]; do
    su "$user" -c 'read c </proc/1/comm && [ "$c" = pam_unshare ]' </dev/null >/dev/null 2>&1 \
        || fail=$((fail + 1))
    i=$((i + 1))
done
echo "$fail"
"""


def failure_loop(env: BenchEnv, runs: int, chunk: int = 500) -> Dict[str, object]:
    """RUNS `su USER -c CHECK` with the module on, in a shell loop (no Python per run); a run
    fails if su fails or the session's PID 1 is not ours. In chunks, between which the inits
    re-parented to us are reaped (else thousands of zombies would hold PIDs)."""
    env.set_mode(True)
    mark = env.log_mark()
    failed = 0
    started = time.perf_counter()
    for first in range(0, runs, chunk):
        result = subprocess.run(
            ["sh", "-c", FAILURE_LOOP, "sh", USER, str(min(chunk, runs - first))],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/", check=True)
        failed += int(result.stdout.strip())
        env.reap()
    elapsed = time.perf_counter() - started
    return {"runs": runs, "failed": failed, "seconds": round(elapsed, 2),
            "runs_per_second": round(runs / elapsed, 1), "module_log": env.module_log(mark),
            "command": f"su {USER} -c 'read c </proc/1/comm && [ \"$c\" = pam_unshare ]'"}
