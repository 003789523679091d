"""Where a login's added latency goes (issue 18): su and sudo with the module off, on, and on with
`debug`, in interleaved blocks. The debug logins' lines give each phase the module times (clone
child, init ready, join); their sum per login is set against the measured added latency (on
minus off), and the rest is what the module does outside the timed path (PAM loading the module,
option parsing, the session slot, close_session) plus the kernel's teardown charged to the
caller. "debug" minus "on" is what writing the debug line costs.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

from pubench import blocks, timing
from pubench.env import USER, BenchEnv
from pubench.timing import Quartiles

ENTRIES = ("su", "sudo")
MODES = ("off", "on", "debug")


@dataclass(frozen=True)
class Plan:
    rounds: int
    per_round: int  # logins per entry, mode and round


@dataclass
class EntryBreakdown:
    entry: str
    latency_ms: Dict[str, Quartiles | None]  # per mode
    added_ms: float | None  # median on - median off
    added_debug_ms: float | None  # median debug - median off
    phases_us: Dict[str, Quartiles]  # timing.phase_quartiles of the debug logins
    sum_of_phase_medians_us: float | None  # the eight phases + init ready + join
    debug_logins: int
    timed_logins: int  # debug lines found for them
    unsuspended: int  # of those, logins whose phases were not timed (procfs mounts to cover)
    failures: Dict[str, int]
    failure_messages: List[str] = field(default_factory=list)

    @property
    def outside_us(self) -> float | None:
        """Added latency the debug line does not account for."""
        total = self.phases_us.get("total")
        if self.added_ms is None or total is None:
            return None
        return self.added_ms * 1000 - total.median


@dataclass
class BreakdownResult:
    rounds: int
    per_round: int
    entries: List[EntryBreakdown]
    mode_problems: List[str]
    module_log: List[str]  # the module's lines other than the debug ones (failures)


def argv(env: BenchEnv, entry: str) -> List[str]:
    # As latency.py times them.
    return env.entry_argv("su", "true") if entry == "su" else ["sudo", "-u", USER, "true"]


def mode_setters(env: BenchEnv) -> Dict[str, blocks.Setter]:
    return {"off": lambda: env.set_mode(False), "on": lambda: env.set_mode(True),
            "debug": lambda: env.set_mode(True, ("debug",))}


def _median_gap(samples: Dict[str, blocks.Samples], mode: str) -> float | None:
    if not samples[mode].ms or not samples["off"].ms:
        return None
    return statistics.median(samples[mode].ms) - statistics.median(samples["off"].ms)


def measure(env: BenchEnv, plan: Plan, seed: int, progress: Callable[[str], None]
            ) -> BreakdownResult:
    rng = random.Random(seed)
    problems: List[str] = []
    found: Dict[str, List[timing.LoginTiming]] = {}
    entries = []
    everything_since = env.log_mark()
    for entry in rng.sample(ENTRIES, len(ENTRIES)):
        check = blocks.pid1_check(env, entry)
        progress(f"breakdown: {entry}, {plan.rounds} rounds of {plan.per_round} logins per mode")
        mark = env.log_mark()
        samples = blocks.interleaved(env, argv(env, entry), mode_setters(env), plan.rounds,
                                     plan.per_round, rng, check, problems)
        # The check's probe logins under "debug" log too: one per round.
        lines = env.syslog.lines(mark) if env.syslog else []
        found[entry] = [t for t in timing.parse_all(lines) if t.service == entry]
        phases = timing.phase_quartiles(found[entry])
        parts = [phases[name].median for name in (*timing.PHASES, "init ready", "join")
                 if name in phases]
        entries.append(EntryBreakdown(
            entry=entry,
            latency_ms={mode: timing.quartiles(samples[mode].ms) for mode in MODES},
            added_ms=_median_gap(samples, "on"),
            added_debug_ms=_median_gap(samples, "debug"),
            phases_us=phases,
            sum_of_phase_medians_us=sum(parts) if parts else None,
            debug_logins=len(samples["debug"].ms) + plan.rounds,
            timed_logins=len(found[entry]),
            unsuspended=sum(1 for t in found[entry] if t.kind == "unsuspended"),
            failures={mode: samples[mode].failures for mode in MODES},
            failure_messages=[f"{mode} {message}" for mode in MODES
                              for message in samples[mode].messages]))
    module_lines = env.syslog.lines(everything_since) if env.syslog else []
    other = timing.not_debug(module_lines)
    entries.sort(key=lambda e: ENTRIES.index(e.entry))
    return BreakdownResult(plan.rounds, plan.per_round, entries, problems, other[:20])


def _cell(value: Quartiles | None) -> str:
    if value is None:
        return "-"
    return f"{value.median:.0f} ({value.p25:.0f}-{value.p75:.0f})"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def markdown(result: BreakdownResult) -> List[str]:
    """The breakdown's lines of results.md."""
    entries = result.entries
    lines = [f"Where the added latency goes: `su USER -c true` and `sudo -u USER true`, module "
             f"off, on and on with `debug`, {result.rounds} interleaved rounds of "
             f"{result.per_round} logins per mode; phases from the module's debug line, "
             "median µs (p25-p75):", "",
             "| phase | " + " | ".join(e.entry for e in entries) + " |",
             "| --- |" + " ---: |" * len(entries)]
    labels = {"child": "= child (clone to caller running again)",
              "init ready": "init ready (caller waits for PID 1)",
              "join": "join (caller's setns)",
              "total": "**= timed by the module per login**"}
    for row in (*timing.PHASES, "child", "init ready", "join", "total"):
        lines.append(f"| {labels.get(row, row)} | "
                     + " | ".join(_cell(e.phases_us.get(row)) for e in entries) + " |")

    def row(label: str, values: List[float | None], bold: bool = False) -> str:
        cells = [_us(v) if not bold or v is None else f"**{v:.0f}**" for v in values]
        return f"| {label} | " + " | ".join(cells) + " |"

    def debug_cost(e: EntryBreakdown) -> float | None:
        if e.added_ms is None or e.added_debug_ms is None:
            return None
        return (e.added_debug_ms - e.added_ms) * 1000

    lines += [
        row("sum of the medians above (phases, init ready, join)",
            [e.sum_of_phase_medians_us for e in entries]),
        row("**measured added latency (median on - median off)**",
            [None if e.added_ms is None else e.added_ms * 1000 for e in entries], bold=True),
        row("not in the debug line (added - timed)", [e.outside_us for e in entries]),
        row("cost of `debug` itself (median debug - median on)",
            [debug_cost(e) for e in entries]),
        "", "Latency in ms, median (p25-p75), and the logins the debug line timed:", "",
        "| entry | off | on | on + debug | debug lines / debug logins | not suspended "
        "| failed |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e in entries:
        cells = []
        for mode in MODES:
            value = e.latency_ms.get(mode)
            cells.append("-" if value is None
                         else f"{value.median:.2f} ({value.p25:.2f}-{value.p75:.2f})")
        lines.append(f"| {e.entry} | {' | '.join(cells)} | {e.timed_logins} / "
                     f"{e.debug_logins} | {e.unsuspended} | {sum(e.failures.values())} |")
    lines.append("")
    lines.append("Phases: clone = clone() until the child runs (new PID namespace, copy of the "
                 "mount table); mounts = / made slave, the session's /proc; procfs = other "
                 "procfs mounts found and covered; exec = the init's exec until the caller runs. "
                 "Not in the debug line: PAM loading the module and parsing options, the "
                 "session slot, close_session, the session's teardown.")
    for problem in result.mode_problems:
        lines += ["", f"Mode problem: {problem}"]
    for line in result.module_log:
        lines += ["", f"Module said: `{line}`"]
    lines.append("")
    return lines


def chart(result: BreakdownResult, path: Path) -> None:
    """Per entry, the phases' medians stacked, next to the measured added latency. Needs
    matplotlib (the caller checks)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    parts = [*timing.PHASES, "init ready", "join"]
    colours = plt.get_cmap("tab20").colors
    for index, entry in enumerate(result.entries):
        bottom = 0.0
        for number, name in enumerate(parts):
            value = entry.phases_us.get(name)
            if value is None:
                continue
            axis.bar(index * 3, value.median, bottom=bottom, color=colours[number % 20],
                     label=name if index == 0 else None)
            bottom += value.median
        if entry.added_ms is not None:
            axis.bar(index * 3 + 1, entry.added_ms * 1000, color="#555555",
                     label="measured added (on - off)" if index == 0 else None)
    axis.set_xticks([i * 3 + 0.5 for i in range(len(result.entries))],
                    [f"{e.entry}: phases | added" for e in result.entries])
    axis.set_ylabel("µs (medians)")
    axis.set_title("Where a login's added latency goes (module debug line)", fontsize=11)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
