#!/usr/bin/env python3
"""pam-unshare benchmarks: one command prints a table and writes JSON and a chart.

usage (as root, with the package and the tests' support installed:
       python3 -m pip install '.[bench]' && python3 -m pip install -e tests/support):
    python3 benchmarks/run.py            default run (about 5 minutes on 2 CPUs)
    python3 benchmarks/run.py --quick    smoke run (under a minute)
    python3 benchmarks/run.py --full     10,000-run failure loop, more rounds (about 15 minutes)

Measures, on this machine and in one run, with the module against without it:
  - login latency of su, sudo and ssh (loopback sshd), module off and on in interleaved rounds,
    with `true` and `unshare --pid --fork --mount-proc true` as controls and floor;
  - su failures in a loop of 1,000 (--full: 10,000) logins;
  - Pss and Rss of a session's PID 1 under su, sudo and sshd, and its CPU over 30 idle seconds;
  - logout: from the session's last process exiting to PID 1 being gone;
  - N = 100, 500, 1,000 concurrent su sessions opened and closed: time, memory, failures,
    leftovers;
  - breakdown: su and sudo off, on and on with `debug`: each phase the module's debug line times,
    their sum against the measured added latency;
  - growth: with about 50, 1,000 and 10,000 mounts (--quick: 50, 1,000) in the sandbox, su
    latency off/on and kernel memory per live session; and a host mount + umount pair with 1,
    100 and 1,000 live sessions (--quick: 1, 100), propagation=slave against private;
  - join: scope=user, a login joining the user's running namespace against off and against a
    new namespace.

Everything runs in a sandbox (a private mount namespace with throwaway copies of /etc/pam.d and
the account files, as in the tests): the host's PAM files are never written. Writes
results.json, results.md and the charts latency.png, breakdown.png and growth.png (with
matplotlib) to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

from pubench import breakdown, growth, join, latency, procfs, procs, report, scale, session
from pubench.env import BenchEnv, host_pam_mentions_module

import pam_unshare

PARTS = ("latency", "failures", "session", "logout", "scale", "procfs", "breakdown", "growth",
         "join")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    rounds: int  # interleaved latency rounds
    per_round: int  # runs per path per mode per round (true, unshare, su, sudo)
    ssh_per_round: int  # ssh runs per mode per round
    failure_runs: int
    idle_seconds: float
    logout_sessions: int
    scale_sizes: Tuple[int, ...]
    resamples: int  # bootstrap resamples for the ratio's interval
    breakdown: breakdown.Plan
    growth: growth.Plan
    join: join.Plan


PLANS = {
    "quick": Plan(5, 20, 4, 200, 5, 5, (100,), 300, breakdown.Plan(3, 10),
                  growth.Plan((50, 1000), 4, 10, 10, 50, (1, 100), 100), join.Plan(3, 10, 10)),
    "default": Plan(20, 50, 12, 1000, 30, 20, (100, 500, 1000), 1000, breakdown.Plan(10, 30),
                    growth.Plan((50, 1000, 10_000), 5, 10, 20, 100, (1, 100, 1000), 200),
                    join.Plan(10, 20, 20)),
    "full": Plan(50, 100, 20, 10_000, 30, 50, (100, 500, 1000), 2000, breakdown.Plan(20, 50),
                 growth.Plan((50, 1000, 10_000), 10, 20, 50, 100, (1, 100, 1000), 500),
                 join.Plan(20, 50, 50)),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _first_line(argv: List[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (result.stdout or result.stderr).strip().splitlines()[0]


def machine_info(module: str, installed: str) -> Dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open(module, "rb") as handle:
        module_sha = hashlib.sha256(handle.read()).hexdigest()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_total_mib": procs.meminfo()["MemTotal"] // 1024,
        "python": platform.python_version(),
        "su": _first_line(["su", "--version"]),
        "sudo": _first_line(["sudo", "-V"]),
        "ssh": _first_line(["ssh", "-V"]),
        "module": installed,
        "module_copy": module,
        "module_sha256": module_sha,
        "package_version": pam_unshare.__version__,
        "git_commit": _first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "loadavg_start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "foreign_session_inits": procs.machine_counts()["session_inits"],
    }


def _jsonable(value: object) -> Any:
    """The typed records of the newer parts, as JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON: {value!r}")


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare_process() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs.become_subreaper()


def measure(env: BenchEnv, plan: Plan, parts: List[str], seed: int) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    if "latency" in parts or "session" in parts:
        env.start_sshd()
    if "latency" in parts:
        log(f"latency: {plan.rounds} rounds of {plan.per_round} runs per path and mode "
            f"({plan.ssh_per_round} for ssh)")
        results["latency"] = latency.measure(env, plan.rounds, plan.per_round,
                                             plan.ssh_per_round, seed, log)
    if "failures" in parts:
        log(f"failure loop: {plan.failure_runs} su logins, module on")
        results["failure_loop"] = latency.failure_loop(env, plan.failure_runs)
    if "session" in parts:
        log(f"session PID 1: memory per entry, CPU over {plan.idle_seconds:g} idle seconds")
        results["session"] = session.memory_and_cpu(env, plan.idle_seconds)
    if "logout" in parts:
        log(f"logout: {plan.logout_sessions} su sessions per scenario")
        results["logout"] = session.logout(env, plan.logout_sessions)
    if "procfs" in parts:
        log(f"procfs: su -c true with {procfs.EXTRA_MOUNTS} other procfs mounts, "
            f"{plan.rounds} rounds")
        results["procfs"] = procfs.measure(env, plan.rounds, max(5, plan.per_round // 2),
                                           seed, log)
    if "breakdown" in parts:
        results["breakdown"] = breakdown.measure(env, plan.breakdown, seed, log)
    if "join" in parts:
        results["join"] = join.measure(env, plan.join, seed, log)
    if "growth" in parts:
        results["growth"] = growth.measure(env, plan.growth, seed, log)
        results["growth_slopes"] = results["growth"].slopes()
    if "scale" in parts:
        results["scale"] = []
        for n in plan.scale_sizes:
            for on in (False, True):
                log(f"scale: {n} concurrent su sessions, module {'on' if on else 'off'}")
                run = scale.run(env, n, on, timeout=max(120.0, n * 0.5))
                results["scale"].append(run)
                log(f"  opened {run['opened']}/{n} in {run['open_all_seconds']:.1f} s, closed in "
                    f"{run['close_all_seconds']:.1f} s, leftovers {run['leftover']}")
    return results


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark pam-unshare: login latency off vs on, PID 1 memory and CPU, "
                    "logout, concurrent sessions. Run as root.",
        epilog="example: sudo python3 benchmarks/run.py --quick")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    size.add_argument("--full", action="store_true",
                      help="10,000-run failure loop and more latency rounds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where results.json, results.md and the charts go "
                             f"(default {DEFAULT_OUT})")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=6, help="seed of the round order")
    args = parser.parse_args(argv)
    # The sandbox moves this process to / (pam_unshare.sandbox): a relative --out means here.
    args.out = args.out.resolve()
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("run.py: run as root (su, sudo, sshd, mount namespaces)", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full" if args.full else "default"
    plan = PLANS[mode]

    if host_pam_mentions_module():
        print("run.py: the host's /etc/pam.d already names pam_unshare; refusing to compare "
              "against it", file=sys.stderr)
        return 2
    prepare_process()
    started = time.monotonic()
    env = BenchEnv()
    machine = machine_info(env.module, env.installed_module)
    log(f"mode {mode}, module {env.module}, user {env.uid}, workdir {env.workdir}")
    try:
        results = measure(env, plan, parts, args.seed)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        env.close()
    machine["loadavg_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    results.update({"mode": mode, "plan": dataclasses.asdict(plan), "machine": machine,
                    "seconds": round(time.monotonic() - started, 1),
                    "command": "python3 benchmarks/run.py"
                               + {"quick": " --quick", "full": " --full"}.get(mode, "")})
    if "latency" in results:
        results["latency_stats"] = report.latency_stats(results["latency"], plan.resamples,
                                                        args.seed)
    if "scale" in results:
        results["scale_extra_per_session_kib"] = report.scale_extra(results["scale"])
    results["targets"] = report.targets(results)
    results["host_pam_d_mentions_module"] = host_pam_mentions_module()

    args.out.mkdir(parents=True, exist_ok=True)
    table = report.markdown(results)
    (args.out / "results.md").write_text(table + "\n", encoding="utf-8")
    with open(args.out / "results.json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1, default=_jsonable)
        handle.write("\n")
    problem, charts = report.charts(results, args.out)
    print(table)
    print(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}"
          + "".join(f", {chart}" for chart in charts))
    if problem:
        print(problem, file=sys.stderr)
    if results["host_pam_d_mentions_module"]:
        print(f"HOST /etc/pam.d NAMES THE MODULE: {results['host_pam_d_mentions_module']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
