"""Figures from the raw results: statistics, the verdict on each target, the Markdown tables and
the latency chart."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from pubench import breakdown, growth, join

Results = Dict[str, Any]

LATENCY_LABELS = {
    "true": "`true` (spawn only)",
    "unshare": "`unshare --pid --fork --mount-proc true` (floor)",
    "su": "`su USER -c true`",
    "sudo": "`sudo -u USER true`",
    "ssh": "`ssh USER@127.0.0.1 true`",
}
TARGET_SU_ADDED_MS = 0.3
TARGET_SU_RATIO = 1.06
TARGET_SSH_RATIO = 1.02
TARGET_FAILURE_RUNS = 10_000
TARGET_PSS_KIB = 128
TARGET_SCALE_N = 1000
# Other jobs' CPU use during the latency rounds above which a run is called disturbed.
NOISY_OTHERS_CPUS = 0.5


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of VALUES."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> Dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "p95": percentile(values, 95),
            "mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def ratio_ci(off: Sequence[float], on: Sequence[float], resamples: int, seed: int
             ) -> Tuple[float, float]:
    """Bootstrap 95% interval of median(on) / median(off)."""
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(on, k=len(on)))
                    / statistics.median(rng.choices(off, k=len(off)))
                    for _ in range(resamples))
    return ratios[int(0.025 * resamples)], ratios[min(resamples - 1, int(0.975 * resamples))]


def latency_stats(latency: Results, resamples: int, seed: int) -> Dict[str, Dict[str, Any]]:
    stats = {}
    for name, path in latency["paths"].items():
        off, on = path["samples_ms"]["off"], path["samples_ms"]["on"]
        entry: Dict[str, Any] = {"off": summary(off), "on": summary(on),
                                 "failures": path["failures"]}
        if off and on:
            entry["added_median_ms"] = entry["on"]["median"] - entry["off"]["median"]
            entry["ratio_median"] = entry["on"]["median"] / entry["off"]["median"]
            entry["ratio_p95"] = entry["on"]["p95"] / entry["off"]["p95"]
            entry["ratio_median_ci95"] = ratio_ci(off, on, resamples, seed)
            paired = [pair["on"] / pair["off"] for pair in path["round_medians_ms"]
                      if "on" in pair and "off" in pair]
            entry["ratio_median_of_rounds"] = statistics.median(paired) if paired else None
        stats[name] = entry
    return stats


def _verdict(met: bool, partial: bool = False) -> str:
    if not met:
        return "missed"
    return "met (partial run)" if partial else "met"


def targets(results: Results) -> List[Dict[str, Any]]:
    """Each target of issue 6 with the measured figure and met / missed."""
    out: List[Dict[str, Any]] = []
    stats = results.get("latency_stats", {})
    load = results.get("latency", {}).get("machine_load") or {}
    disturbed = load.get("others_cpus", 0.0) > NOISY_OTHERS_CPUS

    def timed(verdict: str) -> str:
        return (f"{verdict} (disturbed run: other jobs used {load['others_cpus']:.2f} CPUs)"
                if disturbed else verdict)

    if "su" in stats and "ratio_median" in stats["su"]:
        su = stats["su"]
        out.append({"target": f"su: added median latency <= {TARGET_SU_ADDED_MS} ms",
                    "figure": f"{su['added_median_ms']:+.2f} ms "
                              f"({su['off']['median']:.2f} -> {su['on']['median']:.2f} ms)",
                    "status": timed(_verdict(su["added_median_ms"] <= TARGET_SU_ADDED_MS))})
        low, high = su["ratio_median_ci95"]
        out.append({"target": f"su: ratio on/off <= {TARGET_SU_RATIO}",
                    "figure": f"{su['ratio_median']:.3f} (95% CI {low:.3f}-{high:.3f})",
                    "status": timed(_verdict(su["ratio_median"] <= TARGET_SU_RATIO))})
    if "ssh" in stats and "ratio_median" in stats["ssh"]:
        ssh = stats["ssh"]
        low, high = ssh["ratio_median_ci95"]
        out.append({"target": f"sshd: ratio on/off <= {TARGET_SSH_RATIO}",
                    "figure": f"{ssh['ratio_median']:.3f} (95% CI {low:.3f}-{high:.3f}; "
                              f"{ssh['added_median_ms']:+.1f} ms)",
                    "status": timed(_verdict(ssh["ratio_median"] <= TARGET_SSH_RATIO))})
    loop = results.get("failure_loop")
    if loop:
        out.append({"target": f"0 failed su runs in {TARGET_FAILURE_RUNS:,}",
                    "figure": f"{loop['failed']} failed of {loop['runs']:,}",
                    "status": _verdict(loop["failed"] == 0,
                                       partial=loop["runs"] < TARGET_FAILURE_RUNS)})
    if stats:
        failed = sum(entry["failures"]["on"] + entry["failures"]["off"]
                     for entry in stats.values())
        runs = sum(entry["on"]["n"] + entry["off"]["n"] for entry in stats.values()) + failed
        out.append({"target": "0 failed runs in the latency rounds (all paths, on and off)",
                    "figure": f"{failed} failed of {runs:,}", "status": _verdict(failed == 0)})
    session = results.get("session")
    if session:
        pss = {entry: figures["pss_kib"] for entry, figures in session["memory"].items()
               if "pss_kib" in figures}
        helpers = sum(len(figures.get("helpers", [])) for figures in session["memory"].values())
        if pss:
            out.append({"target": f"PID 1 Pss <= {TARGET_PSS_KIB} KiB per session",
                        "figure": ", ".join(f"{e} {v} KiB" for e, v in pss.items())
                                  + f"; helpers kept: {helpers}",
                        "status": _verdict(max(pss.values()) <= TARGET_PSS_KIB and helpers == 0
                                           and len(pss) == len(session["memory"]))})
        ticks = {entry: figures["ticks"] for entry, figures in session["idle_cpu"].items()}
        out.append({"target": "0 CPU ticks in 30 idle seconds",
                    "figure": ", ".join(f"{e} {v}" for e, v in ticks.items())
                              + f" ticks in {session['idle_seconds']:g} s",
                    "status": _verdict(bool(ticks) and max(ticks.values()) == 0,
                                       partial=session["idle_seconds"] < 30)})
    scale = [run for run in results.get("scale", []) if run["mode"] == "on"]
    if scale:
        biggest = max(scale, key=lambda run: run["n"])
        left = biggest["leftover"]
        clean = (biggest["failed"] == 0 and biggest["stuck_inits"] == 0
                 and not any(left.values()))
        out.append({"target": f"{TARGET_SCALE_N:,} concurrent sessions open and close with 0 "
                              "failures and 0 leftovers",
                    "figure": f"N={biggest['n']:,}: {biggest['failed']} failed, "
                              f"{biggest['stuck_inits']} PID 1 not gone, leftovers "
                              f"{left['processes']} processes / {left['pid_namespaces']} PID "
                              f"namespaces / {left['mounts']} mounts",
                    "status": _verdict(clean, partial=biggest["n"] < TARGET_SCALE_N)})
    return out


def scale_extra(scale: List[Dict[str, Any]]) -> Dict[int, Dict[str, float]]:
    """Per N, what a session costs with the module minus without it, in KiB."""
    runs = {(run["n"], run["mode"]): run for run in scale}
    extra = {}
    for n in sorted({run["n"] for run in scale}):
        off, on = runs.get((n, "off")), runs.get((n, "on"))
        if off and on:
            extra[n] = {
                "pss_kib": (on["session_pss_kib_total"] - off["session_pss_kib_total"]) / n,
                "kernel_kib": (on["kernel_kib"] - off["kernel_kib"]) / n,
                "memavailable_kib": (on["memavailable_drop_kib"]
                                     - off["memavailable_drop_kib"]) / n,
            }
    return extra


def markdown(results: Results) -> str:
    lines: List[str] = []
    machine = results["machine"]
    lines.append(f"Run {machine['date']} on {machine['nproc']} CPUs ({machine['cpu']}), kernel "
                 f"{machine['kernel']}, mode `{results['mode']}`, {results['seconds']:.0f} s; "
                 f"load average {machine['loadavg_start']} at start, "
                 f"{machine.get('loadavg_end', '?')} at end; other sessions' PID 1s running at "
                 f"start: {machine['foreign_session_inits']}.")
    lines.append("")
    if results.get("targets"):
        lines += ["| target | measured | status |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['figure']} | {t['status']} |"
                  for t in results["targets"]]
        lines.append("")
    other_procfs = results.get("procfs")
    if other_procfs:
        lines.append("`su -c true` (module on) with other procfs mounts to cover at login, "
                     "interleaved rounds:")
        lines.append("")
        lines += ["| other procfs mounts | median ms | runs | failed |",
                  "| ---: | ---: | ---: | ---: |"]
        for count in other_procfs["extra_mounts"]:
            median = other_procfs["median_ms"][str(count)]
            lines.append(f"| {count} | {'-' if median is None else f'{median:.2f}'} | "
                         f"{other_procfs['runs'][str(count)]} | "
                         f"{other_procfs['failures'][str(count)]} |")
        per_mount = other_procfs["per_mount_us"]
        if per_mount is not None:
            lines.append("")
            lines.append(f"About {per_mount:.0f} us per procfs mount covered.")
        lines.append("")
    stats = results.get("latency_stats")
    if stats:
        rounds = results["latency"]["rounds"]
        lines.append(f"Login latency in ms over {rounds} rounds; in each round every path runs "
                     "a block of back-to-back logins with the module off and one with it on, in "
                     "random order:")
        lines.append("")
        lines += ["| path | off median | on median | added | ratio (95% CI) | off p95 | on p95 "
                  "| p95 ratio | runs off/on | failed |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, entry in stats.items():
            if "ratio_median" not in entry:
                continue
            low, high = entry["ratio_median_ci95"]
            failed = entry["failures"]["off"] + entry["failures"]["on"]
            lines.append(
                f"| {LATENCY_LABELS.get(name, name)} | {entry['off']['median']:.2f} | "
                f"{entry['on']['median']:.2f} | {entry['added_median_ms']:+.2f} | "
                f"{entry['ratio_median']:.3f} ({low:.3f}-{high:.3f}) | {entry['off']['p95']:.2f}"
                f" | {entry['on']['p95']:.2f} | {entry['ratio_p95']:.3f} | "
                f"{entry['off']['n']}/{entry['on']['n']} | {failed} |")
        lines.append("")
        lines.append("`true` and `unshare` do not go through PAM: their ratio shows the noise of "
                     "the run.")
        load = results["latency"].get("machine_load")
        if load:
            lines.append("")
            lines.append(f"During these rounds ({load['seconds']:.0f} s) the machine's "
                         f"{load['cpus']} CPUs were {load['busy_cpus']:.2f} CPUs busy: this "
                         f"benchmark {load['ours_cpus']:.2f}, other jobs {load['others_cpus']:.2f}"
                         f", steal {load['steal_cpus']:.2f}.")
            if load["others_cpus"] > NOISY_OTHERS_CPUS:
                lines.append("")
                lines.append(f"**Warning: other jobs used more than {NOISY_OTHERS_CPUS} CPU "
                             "during the latency rounds; the absolute times, and ratios "
                             "measured in milliseconds, are not reliable. Re-run on a quiet "
                             "machine.**")
        lines.append("")
    loop = results.get("failure_loop")
    if loop:
        lines.append(f"Failure loop, module on: {loop['failed']} of {loop['runs']:,} "
                     f"`{loop['command']}` failed ({loop['runs_per_second']} runs/s).")
        lines.append("")
    session = results.get("session")
    if session:
        idle = session["idle_seconds"]
        lines += [f"Session PID 1 (alone), and its CPU over {idle:g} idle seconds:", "",
                  "| entry | Pss KiB | Rss KiB | helpers kept | CPU ticks | CPU time | wakeups |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for entry, memory in session["memory"].items():
            cpu = session["idle_cpu"].get(entry, {})
            if "pss_kib" not in memory:
                lines.append(f"| {entry} | {memory.get('error')} | | | | | |")
                continue
            lines.append(f"| {entry} | {memory['pss_kib']} | {memory['rss_kib']} | "
                         f"{len(memory['helpers'])} | {cpu.get('ticks', '-')} | "
                         f"{cpu.get('run_us', '-')} µs | {cpu.get('context_switches', '-')} |")
        lines.append("")
    logout = results.get("logout")
    if logout:
        lines += ["Logout (su): ms from SIGKILL to the session's last process ... (median, max; "
                  "as seen through pidfds polled every 1 ms):", "",
                  "| scenario | last process gone | su returns | PID 1 exits | PID 1 gone | "
                  "sessions |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for scenario, figures in logout.items():
            cells = []
            for key in ("last_exit_ms", "su_exit_ms", "init_exiting_ms", "init_gone_ms"):
                value = figures.get(key)
                cells.append("-" if not value else f"{value['median']:.2f} ({value['max']:.2f})")
            lines.append(f"| {scenario} | {' | '.join(cells)} | {figures['sessions']} |")
        lines.append("")
    scale = results.get("scale")
    if scale:
        lines += ["Concurrent su sessions, each holding a `sleep` (memory per session in KiB: "
                  "Pss of su + sleep + PID 1; kernel = Slab + KernelStack + PageTables growth; "
                  "MemAvailable drop, noisy):", "",
                  "| N | module | open all (s) | failed | Pss / session | PID 1 Pss / session "
                  "| kernel / session | MemAvailable drop / session | close all (s) | leftover "
                  "processes / PID ns / mounts |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for run in scale:
            left = run["leftover"]
            n = run["n"]
            init = f"{run['init_pss_kib_total'] / n:.0f}" if run["mode"] == "on" else "-"
            lines.append(
                f"| {n:,} | {run['mode']} | {run['open_all_seconds']:.2f} | {run['failed']} | "
                f"{run['session_pss_kib_total'] / n:.0f} | {init} | {run['kernel_kib'] / n:.0f} | "
                f"{run['memavailable_drop_kib'] / n:.0f} | {run['close_all_seconds']:.2f} | "
                f"{left['processes']} / {left['pid_namespaces']} / {left['mounts']} |")
        lines.append("")
        extra = scale_extra(scale)
        if extra:
            lines.append("Extra per session with the module (on minus off): " + "; ".join(
                f"N={n:,}: Pss {e['pss_kib']:+.0f} KiB, kernel {e['kernel_kib']:+.0f} KiB, "
                f"MemAvailable {e['memavailable_kib']:+.0f} KiB" for n, e in extra.items()) + ".")
            lines.append("")
    if "breakdown" in results:
        lines += breakdown.markdown(results["breakdown"])
    if "growth" in results:
        lines += growth.markdown(results["growth"])
    if "join" in results:
        lines += join.markdown(results["join"])
    return "\n".join(lines)


def charts(results: Results, out: Path) -> Tuple[str | None, List[Path]]:
    """Every chart the results have data for, into OUT; why not (matplotlib missing), and
    the files written."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no charts", []
    matplotlib.use("Agg")
    written = []
    if "latency" in results:
        chart(results, out / "latency.png")
        written.append(out / "latency.png")
    if "breakdown" in results:
        breakdown.chart(results["breakdown"], out / "breakdown.png")
        written.append(out / "breakdown.png")
    if "growth" in results:
        growth.chart(results["growth"], out / "growth.png")
        written.append(out / "growth.png")
    return None, written


def chart(results: Results, path: Path) -> str | None:
    """The latency distributions, off against on, per path (ECDFs), and the median ratios with
    their intervals. Returns why not, if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = results["latency"]["paths"]
    stats = results["latency_stats"]
    names = [name for name in ("su", "sudo", "ssh", "true", "unshare") if name in latency]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    flat = list(axes.flat)
    colours = {"off": "#4c72b0", "on": "#dd8452"}
    for axis, name in zip(flat, names):
        for mode in ("off", "on"):
            values = sorted(latency[name]["samples_ms"][mode])
            if not values:
                continue
            fraction = [(i + 1) / len(values) for i in range(len(values))]
            axis.step(values, fraction, where="post", color=colours[mode],
                      label=f"{mode}: median {statistics.median(values):.2f} ms")
            axis.axvline(statistics.median(values), color=colours[mode], linestyle=":",
                         linewidth=1)
        every = latency[name]["samples_ms"]["off"] + latency[name]["samples_ms"]["on"]
        if every:
            axis.set_xlim(percentile(every, 0.5) * 0.97, percentile(every, 99.5) * 1.03)
        axis.set_title(LATENCY_LABELS.get(name, name).replace("`", ""), fontsize=10)
        axis.set_xlabel("ms")
        axis.set_ylabel("fraction of runs")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right", fontsize=9)
    ratio_axis = flat[len(names)] if len(names) < len(flat) else None
    if ratio_axis is not None:
        shown = [name for name in names if "ratio_median" in stats[name]]
        values = [stats[name]["ratio_median"] for name in shown]
        low = [stats[name]["ratio_median"] - stats[name]["ratio_median_ci95"][0]
               for name in shown]
        high = [stats[name]["ratio_median_ci95"][1] - stats[name]["ratio_median"]
                for name in shown]
        ratio_axis.bar(shown, values, yerr=[low, high], capsize=4, color="#8c8c8c")
        ratio_axis.axhline(1.0, color="black", linewidth=0.8)
        ratio_axis.axhline(TARGET_SU_RATIO, color="#c44e52", linestyle="--", linewidth=1,
                           label=f"su target {TARGET_SU_RATIO}")
        ratio_axis.axhline(TARGET_SSH_RATIO, color="#55a868", linestyle="--", linewidth=1,
                           label=f"sshd target {TARGET_SSH_RATIO}")
        bottom = min([*values, 1.0]) - 0.05
        ratio_axis.set_ylim(bottom, max([*values, TARGET_SU_RATIO]) + 0.06)
        ratio_axis.set_title("median on / median off (95% bootstrap CI)", fontsize=10)
        ratio_axis.legend(fontsize=9)
        ratio_axis.grid(axis="y", alpha=0.3)
    for axis in flat[len(names) + 1:]:
        axis.axis("off")
    machine = results["machine"]
    figure.suptitle(f"pam-unshare login latency, module off vs on ({machine['date']}, "
                    f"{machine['nproc']} CPUs, kernel {machine['kernel']})", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None
