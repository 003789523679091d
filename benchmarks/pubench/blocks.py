"""Interleaved blocks: per round, for each mode in random order, a block of back-to-back runs of
one command line (as latency.py does for its paths), so that drift in the machine's load hits
every mode alike. A mode is a way to set the sandbox's PAM files; a check per block makes sure
the setting took."""

from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from pam_unshare_testsupport import hostprocs

from pam_unshare.proc import INIT_COMM
from pubench.env import BenchEnv
from pubench.latency import _timed_run

# What makes the mode: sets the PAM files (env.set_mode) for the next block.
Setter = Callable[[], None]
# After the setter, before the block: a problem with the mode, or None.
Check = Callable[[str], "str | None"]


@dataclass
class Samples:
    ms: List[float] = field(default_factory=list)
    failures: int = 0
    messages: List[str] = field(default_factory=list)


def run_block(env: BenchEnv, argv: Sequence[str], count: int, into: Samples) -> None:
    for _ in range(count):
        ms, rc, err = _timed_run(list(argv))
        env.reap()  # what the login left us, at once, untimed
        if rc != 0:
            into.failures += 1
            if len(into.messages) < 10:
                into.messages.append(f"rc {rc}: {err[:300]}")
            continue
        into.ms.append(ms)


def interleaved(env: BenchEnv, argv: Sequence[str], modes: Dict[str, Setter], rounds: int,
                per_round: int, rng: random.Random, check: Check | None = None,
                problems: List[str] | None = None) -> Dict[str, Samples]:
    samples = {mode: Samples() for mode in modes}
    names = list(modes)
    for _ in range(rounds):
        for mode in rng.sample(names, len(names)):
            modes[mode]()
            if check is not None:
                problem = check(mode)
                if problem and problems is not None and len(problems) < 20:
                    problems.append(problem)
            run_block(env, argv, per_round, samples[mode])
    return samples


# The comm of the session's PID 1 and its PID namespace, as the user's shell sees them.
PROBE = 'read c </proc/1/comm; echo "$c $(readlink /proc/self/ns/pid)"'


@dataclass(frozen=True)
class Probe:
    pid1: str  # "pam_unshare" when the module namespaced the login
    namespace: int | None
    error: str = ""


def probe(env: BenchEnv, entry: str) -> Probe:
    result = subprocess.run(env.entry_argv(entry, PROBE), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, cwd="/", timeout=60)
    words = result.stdout.split()
    if result.returncode != 0 or len(words) != 2:
        return Probe("", None, f"rc {result.returncode}: {result.stderr.strip()[:300]}")
    return Probe(words[0], hostprocs.namespace_id(words[1]))


def pid1_check(env: BenchEnv, entry: str, off_modes: Sequence[str] = ("off",)) -> Check:
    """A check that ENTRY's PID 1 is ours in every mode but OFF_MODES, and not ours in those."""
    def check(mode: str) -> str | None:
        seen = probe(env, entry)
        if seen.error or (seen.pid1 == INIT_COMM) == (mode in off_modes):
            return f"{entry} under {mode}: PID 1 {seen.pid1!r} {seen.error}"
        return None
    return check
