"""What covering other procfs mounts costs a login (issue 13): `su -c true` with the module on,
with 0, 4 and 16 extra procfs instances mounted in the benchmark's private mount namespace (a
chroot's /proc, schroot mounts), in interleaved rounds as the latency part does. The module
covers each one with the session's procfs at login, so the slope is its cost per mount.
"""

from __future__ import annotations

import random
import statistics
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

from pubench import latency
from pubench.env import BenchEnv

EXTRA_MOUNTS = (0, 4, 16)


def _mount_procfs(env: BenchEnv, count: int) -> List[Path]:
    mounted = []
    for index in range(count):
        target = env.workdir / f"procfs-{index}"
        target.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
        mounted.append(target)
    return mounted


def _unmount(mounted: List[Path]) -> None:
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)


def measure(env: BenchEnv, rounds: int, per_round: int, seed: int,
            progress: Callable[[str], None]) -> Dict[str, object]:
    rng = random.Random(seed)
    env.set_mode(True)
    samples: Dict[int, List[float]] = {count: [] for count in EXTRA_MOUNTS}
    failures: Dict[int, int] = {count: 0 for count in EXTRA_MOUNTS}
    for round_no in range(rounds):
        for count in rng.sample(EXTRA_MOUNTS, len(EXTRA_MOUNTS)):
            mounted = _mount_procfs(env, count)
            try:
                for _ in range(per_round):
                    ms, rc, _ = latency._timed_run(env.entry_argv("su", "true"))
                    env.reap()
                    if rc != 0:
                        failures[count] += 1
                        continue
                    samples[count].append(ms)
            finally:
                _unmount(mounted)
        progress(f"procfs: round {round_no + 1}/{rounds}")
    medians = {count: statistics.median(values) if values else None
               for count, values in samples.items()}
    base = medians[0]
    per_mount = None
    if base is not None and medians[EXTRA_MOUNTS[-1]] is not None:
        per_mount = (medians[EXTRA_MOUNTS[-1]] - base) / EXTRA_MOUNTS[-1] * 1000
    return {"extra_mounts": list(EXTRA_MOUNTS),
            "median_ms": {str(k): v for k, v in medians.items()},
            "runs": {str(k): len(v) for k, v in samples.items()},
            "failures": {str(k): v for k, v in failures.items()},
            "per_mount_us": per_mount}
