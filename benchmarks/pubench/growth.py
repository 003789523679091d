"""Cost as the host grows (issue 18). Every login copies its caller's whole mount table into the
session's new mount namespace, and every live session with propagation=slave is a peer that
each host mount and unmount must reach. Two measurements, both in the benchmark's private
sandbox mount namespace (nothing here is seen by the host):

- mounts: tmpfs mounts are added until the sandbox has about M mounts in all; at each M,
  `su -c true` with the module off and on in interleaved blocks (latency, added, ratio), a few
  logins with `debug` for the module's own phases (clone copies the table, procfs walks it), and
  the kernel memory (Slab + KernelStack + PageTables growth) of S concurrent sessions holding a
  sleep, module off and on;
- live sessions: a shared tmpfs stands for the host's shared /; with L sessions open (module on,
  propagation=slave, the default, or propagation=private) a mount + umount pair on it is timed.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from pam_unshare import linux
from pubench import blocks, scale, timing
from pubench.env import BenchEnv
from pubench.timing import Quartiles

MNT_DETACH = 2
PROPAGATIONS = ("slave", "private")
# Sessions x mounts the memory measurement may hold at once: each session copies every mount.
MEMORY_MOUNT_COPIES = 200_000

_libc = ctypes.CDLL(None, use_errno=True)


def _umount(target: Path, flags: int = 0) -> None:
    if _libc.umount2(str(target).encode(), ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mount_points() -> List[str]:
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4] for line in handle]


def mount_count() -> int:
    return len(mount_points())


@dataclass(frozen=True)
class Plan:
    mounts: Tuple[int, ...]  # about this many mounts in the sandbox, in all
    rounds: int
    per_round: int  # su logins per mode per round
    debug_logins: int  # per size, for the phases
    sessions: int  # concurrent sessions for the memory figure (fewer at large sizes)
    live: Tuple[int, ...]  # live sessions for the host mount cost
    pairs: int  # mount + umount pairs timed per configuration


class ExtraMounts:
    """tmpfs mounts below one tmpfs in the work directory (private: the sandbox's / is)."""

    def __init__(self, workdir: Path) -> None:
        self.base = workdir / "growth-mounts"
        self.base.mkdir()
        linux.mount("pu-growth", str(self.base), "tmpfs",
                    linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "mode=755")
        self.added = 1

    def grow_to(self, total: int) -> int:
        """Adds mounts until the sandbox has TOTAL (never removes any); the count it has."""
        for _ in range(max(0, total - mount_count())):
            target = self.base / f"m{self.added}"
            target.mkdir()
            linux.mount("pu-growth", str(target), "tmpfs",
                        linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC, "size=4k")
            self.added += 1
        return mount_count()

    def close(self) -> None:
        _umount(self.base, MNT_DETACH)
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class SizeResult:
    mounts: int  # in the sandbox while measuring
    latency_ms: Dict[str, Quartiles | None]  # off, on
    added_ms: float | None
    ratio: float | None
    failures: Dict[str, int]
    phases_us: Dict[str, Quartiles]  # of the debug logins
    memory_sessions: int
    kernel_kib_per_session: Dict[str, float]  # off, on
    memory_failed: Dict[str, int]
    memory_leftover: Dict[str, Dict[str, int]]

    @property
    def extra_kernel_kib(self) -> float | None:
        k = self.kernel_kib_per_session
        return k["on"] - k["off"] if "on" in k and "off" in k else None


@dataclass
class HostMountResult:
    live: int  # sessions open
    propagation: str  # the module's option
    pair_us: Quartiles | None
    # The same pairs just before the sessions were opened: the baseline of this row (the cost
    # of a pair drifts with the machine; rows are compared by their difference).
    without_us: Quartiles | None
    opened: int
    session_sees: str  # optional fields of the shared mount in one session's mountinfo
    leftover_processes: int
    leftover_namespaces: int

    @property
    def extra_us(self) -> float | None:
        if self.pair_us is None or self.without_us is None:
            return None
        return self.pair_us.median - self.without_us.median


@dataclass
class GrowthResult:
    base_mounts: int
    sizes: List[SizeResult]
    host: List[HostMountResult]
    problems: List[str] = field(default_factory=list)
    module_log: List[str] = field(default_factory=list)

    def slopes(self) -> Dict[str, float | None]:
        """Least-squares slopes: us per host mount per login (added latency), us per mount of the
        clone phase, KiB per mount per session, and per propagation us per live session per
        host mount + umount pair."""
        def fit(points: List[Tuple[float, float]]) -> float | None:
            if len(points) < 2 or len({x for x, _ in points}) < 2:
                return None
            mean_x = statistics.fmean(x for x, _ in points)
            mean_y = statistics.fmean(y for _, y in points)
            return (sum((x - mean_x) * (y - mean_y) for x, y in points)
                    / sum((x - mean_x) ** 2 for x, _ in points))

        out: Dict[str, float | None] = {
            "added_us_per_mount": fit([(s.mounts, s.added_ms * 1000) for s in self.sizes
                                       if s.added_ms is not None]),
            "clone_us_per_mount": fit([(s.mounts, s.phases_us["clone"].median)
                                       for s in self.sizes if "clone" in s.phases_us]),
            "procfs_us_per_mount": fit([(s.mounts, s.phases_us["procfs"].median)
                                        for s in self.sizes if "procfs" in s.phases_us]),
            "kernel_kib_per_mount_per_session": fit(
                [(s.mounts, s.extra_kernel_kib) for s in self.sizes
                 if s.extra_kernel_kib is not None]),
        }
        for propagation in PROPAGATIONS:
            points = [(0.0, 0.0)] + [(h.live, h.extra_us) for h in self.host
                                     if h.propagation == propagation and h.extra_us is not None]
            out[f"pair_us_per_session_{propagation}"] = fit(points)
        return out


def _latency(env: BenchEnv, plan: Plan, rng: random.Random, problems: List[str]
             ) -> Dict[str, blocks.Samples]:
    argv = env.entry_argv("su", "true")
    modes: Dict[str, blocks.Setter] = {"off": lambda: env.set_mode(False),
                                       "on": lambda: env.set_mode(True)}
    return blocks.interleaved(env, argv, modes, plan.rounds, plan.per_round, rng,
                              blocks.pid1_check(env, "su"), problems)


def _phases(env: BenchEnv, count: int) -> Dict[str, Quartiles]:
    env.set_mode(True, ("debug",))
    mark = env.log_mark()
    blocks.run_block(env, env.entry_argv("su", "true"), count, blocks.Samples())
    lines = env.syslog.lines(mark) if env.syslog else []
    return timing.phase_quartiles(timing.parse_all(lines))


def _memory(env: BenchEnv, sessions: int, rng: random.Random
            ) -> Tuple[Dict[str, float], Dict[str, int], Dict[str, Dict[str, int]]]:
    per_session: Dict[str, float] = {}
    failed: Dict[str, int] = {}
    leftover: Dict[str, Dict[str, int]] = {}
    for mode in rng.sample(("off", "on"), 2):
        run = scale.run(env, sessions, mode == "on", timeout=max(120.0, sessions * 0.5))
        per_session[mode] = run["kernel_kib"] / sessions  # type: ignore[operator]
        failed[mode] = run["failed"]  # type: ignore[assignment]
        leftover[mode] = run["leftover"]  # type: ignore[assignment]
    return per_session, failed, leftover


def _size(env: BenchEnv, plan: Plan, mounts: int, rng: random.Random, problems: List[str]
          ) -> SizeResult:
    samples = _latency(env, plan, rng, problems)
    medians = {mode: statistics.median(s.ms) for mode, s in samples.items() if s.ms}
    added = medians["on"] - medians["off"] if len(medians) == 2 else None
    phases = _phases(env, plan.debug_logins)
    sessions = max(10, min(plan.sessions, MEMORY_MOUNT_COPIES // mounts))
    per_session, failed, leftover = _memory(env, sessions, rng)
    return SizeResult(
        mounts=mounts,
        latency_ms={mode: timing.quartiles(s.ms) for mode, s in samples.items()},
        added_ms=added,
        ratio=medians["on"] / medians["off"] if added is not None else None,
        failures={mode: s.failures for mode, s in samples.items()},
        phases_us=phases, memory_sessions=sessions, kernel_kib_per_session=per_session,
        memory_failed=failed, memory_leftover=leftover)


def _session_sees(batch: scale.Batch, target: Path) -> str:
    """How one session holds TARGET: the optional fields of its mountinfo line ("master:N" for
    a slave, nothing for private)."""
    for sleeper in batch.sleepers[:1]:
        try:
            with open(f"/proc/{sleeper.pid}/mountinfo") as handle:
                for line in handle:
                    fields = line.split()
                    if fields[4] == str(target):
                        optional = fields[6:fields.index("-")]
                        return " ".join(optional) or "private"
        except OSError as error:
            return f"? {error}"
    return "?"


def _time_pairs(shared: Path, pairs: int) -> Quartiles | None:
    target = shared / "t"
    values = []
    for _ in range(pairs):
        started = time.perf_counter_ns()
        linux.mount("pu-host", str(target), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=4k")
        _umount(target)
        values.append((time.perf_counter_ns() - started) / 1000)
    return timing.quartiles(values)


def _host_mounts(env: BenchEnv, plan: Plan, rng: random.Random,
                 progress: Callable[[str], None]) -> List[HostMountResult]:
    # A shared mount of our own stands for the host's shared /: sessions started after this
    # copy it into the same peer group, then (propagation=slave) become its slaves. Shared only
    # inside the sandbox: it is a new mount of a private namespace, so no host mount is a peer.
    shared = env.workdir / "growth-shared"
    shared.mkdir()
    linux.mount("pu-shared", str(shared), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=755")
    try:
        linux.mount(None, str(shared), None, linux.MS_SHARED)
        (shared / "t").mkdir()
        results = []
        for live in plan.live:
            for propagation in rng.sample(PROPAGATIONS, len(PROPAGATIONS)):
                progress(f"growth: host mount + umount with {live} live sessions, "
                         f"propagation={propagation}")
                without = _time_pairs(shared, plan.pairs)
                batch = scale.open_batch(env, live, True, max(120.0, live * 0.5),
                                         (f"propagation={propagation}",))
                try:
                    sees = _session_sees(batch, shared)
                    pair = _time_pairs(shared, plan.pairs)
                finally:
                    closed = scale.close_batch(env, batch, max(120.0, live * 0.5))
                results.append(HostMountResult(live, propagation, pair, without, batch.isolated,
                                               sees, closed.left_processes,
                                               closed.left_namespaces))
        return results
    finally:
        _umount(shared, MNT_DETACH)
        shutil.rmtree(shared, ignore_errors=True)


def measure(env: BenchEnv, plan: Plan, seed: int, progress: Callable[[str], None]
            ) -> GrowthResult:
    rng = random.Random(seed)
    problems: List[str] = []
    mark = env.log_mark()
    before = mount_points()
    base = len(before)
    host = _host_mounts(env, plan, rng, progress)
    sizes = []
    extra = ExtraMounts(env.workdir)
    try:
        for wanted in sorted(plan.mounts):
            mounts = extra.grow_to(wanted)
            progress(f"growth: {mounts} mounts in the sandbox: latency, phases, memory")
            sizes.append(_size(env, plan, mounts, rng, problems))
    finally:
        extra.close()
    after = mount_points()
    if sorted(after) != sorted(before):
        gone = sorted(set(before) - set(after))
        new = sorted(set(after) - set(before))
        problems.append(f"mounts in the sandbox: {len(before)} before, {len(after)} after "
                        f"(gone: {', '.join(gone) or '-'}; new: {', '.join(new) or '-'})")
    lines = env.syslog.lines(mark) if env.syslog else []
    other = timing.not_debug(lines)
    return GrowthResult(base, sizes, host, problems, other[:20])


def _q(value: Quartiles | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value.median:.{digits}f}"


def _slope(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: GrowthResult) -> List[str]:
    slopes = result.slopes()
    lines = ["Cost as the host's mount table grows: tmpfs mounts added in the sandbox's mount "
             "namespace; `su USER -c true`, module off and on, interleaved; the module's clone "
             "and procfs phases from its debug line; kernel memory (Slab + KernelStack + "
             "PageTables growth) per session of S concurrent sessions holding a sleep:", "",
             "| mounts | off ms | on ms | added ms | ratio | clone µs | procfs µs | child µs | "
             "S | kernel KiB / session off | on | extra | failed |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for s in result.sizes:
        kernel = s.kernel_kib_per_session
        failed = sum(s.failures.values()) + sum(s.memory_failed.values())
        lines.append(
            f"| {s.mounts:,} | {_q(s.latency_ms.get('off'))} | {_q(s.latency_ms.get('on'))} | "
            f"{_slope(s.added_ms)} | {_slope(s.ratio, 3)} | {_q(s.phases_us.get('clone'), 0)} | "
            f"{_q(s.phases_us.get('procfs'), 0)} | {_q(s.phases_us.get('child'), 0)} | "
            f"{s.memory_sessions} | {kernel.get('off', 0):.0f} | {kernel.get('on', 0):.0f} | "
            f"{_slope(s.extra_kernel_kib, 0)} | {failed} |")
    lines += ["", "A mount + umount pair on a shared mount of the sandbox (standing for the "
              "host's shared /) with L live su sessions, by the module's `propagation` "
              "(how a session holds that mount, from its mountinfo), µs:", "",
              "| live sessions | propagation | session holds it as | pair µs, median (p25-p75) "
              "| just before, no session | extra | opened | leftover processes / PID ns |",
              "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |"]

    def cell(value: Quartiles | None) -> str:
        return "-" if value is None else f"{value.median:.1f} ({value.p25:.1f}-{value.p75:.1f})"

    for h in result.host:
        lines.append(f"| {h.live:,} | {h.propagation} | {h.session_sees or '-'} | "
                     f"{cell(h.pair_us)} | {cell(h.without_us)} | {_slope(h.extra_us, 1)} | "
                     f"{h.opened} | {h.leftover_processes} / {h.leftover_namespaces} |")
    lines += ["", "Slopes (least squares): "
              f"{_slope(slopes['added_us_per_mount'])} µs of added login latency per host mount "
              f"(clone phase {_slope(slopes['clone_us_per_mount'])}, procfs phase "
              f"{_slope(slopes['procfs_us_per_mount'])}); "
              f"{_slope(slopes['kernel_kib_per_mount_per_session'], 3)} KiB of kernel memory per "
              "host mount per live session; a host mount + umount pair costs "
              f"{_slope(slopes['pair_us_per_session_slave'], 3)} µs more per live session with "
              f"propagation=slave, {_slope(slopes['pair_us_per_session_private'], 3)} µs with "
              "propagation=private."]
    for problem in result.problems:
        lines += ["", f"Problem: {problem}"]
    for line in result.module_log:
        lines += ["", f"Module said: `{line}`"]
    lines.append("")
    return lines


def chart(result: GrowthResult, path: Path) -> None:
    """Added latency and extra kernel memory per session against mounts; the host's mount +
    umount pair against live sessions. Needs matplotlib (the caller checks)."""
    import matplotlib.pyplot as plt

    figure, (latency, memory, host) = plt.subplots(1, 3, figsize=(15, 4.5))
    sizes = [s for s in result.sizes if s.added_ms is not None]
    latency.plot([s.mounts for s in sizes], [s.added_ms for s in sizes], "o-",
                 label="added (on - off)")
    for phase, style in (("clone", "s--"), ("procfs", "^--")):
        timed = [s for s in result.sizes if phase in s.phases_us]
        latency.plot([s.mounts for s in timed],
                     [s.phases_us[phase].median / 1000 for s in timed], style,
                     label=f"{phase} phase (debug line)")
    latency.set_title("su -c true: added latency vs host mounts", fontsize=10)
    latency.set_xlabel("mounts in the (sandbox) host namespace")
    latency.set_ylabel("ms")
    memory_sizes = [s for s in result.sizes if s.extra_kernel_kib is not None]
    memory.plot([s.mounts for s in memory_sizes], [s.extra_kernel_kib for s in memory_sizes],
                "o-")
    memory.set_title("extra kernel memory per live session", fontsize=10)
    memory.set_xlabel("mounts in the (sandbox) host namespace")
    memory.set_ylabel("KiB")
    for propagation in PROPAGATIONS:
        points = sorted((h.live, h.extra_us) for h in result.host
                        if h.propagation == propagation and h.extra_us is not None)
        host.plot([0] + [x for x, _ in points], [0] + [y for _, y in points], "o-",
                  label=f"propagation={propagation}")
    host.set_title("host mount + umount pair: extra vs live sessions", fontsize=10)
    host.set_xlabel("live su sessions")
    host.set_ylabel("µs more than without sessions")
    for axis in (latency, memory, host):
        axis.grid(alpha=0.3)
    latency.legend(fontsize=9)
    host.legend(fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
