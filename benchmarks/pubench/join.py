"""What joining costs (issue 18): with scope=user a login of a user whose namespace already runs
joins it instead of starting one. One su session of the user holds the namespace open (a sleep);
then `su USER -c true` runs with the module off, on with scope=user (a join) and on with the
default scope=session (a new namespace), in interleaved blocks. A few logins with `debug` give
the module's own time for the join.
"""

from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from pam_unshare.proc import INIT_COMM
from pubench import blocks, session, timing
from pubench.env import BenchEnv
from pubench.timing import Quartiles

MODES = ("off", "join", "new")
USER_SCOPE = ("scope=user",)
RECORDS = "/run/pam_unshare"


@dataclass(frozen=True)
class Plan:
    rounds: int
    per_round: int
    debug_logins: int


@dataclass
class JoinResult:
    rounds: int
    per_round: int
    latency_ms: Dict[str, Quartiles | None]  # off, join, new
    added_ms: Dict[str, float | None]  # join, new: median minus median off
    failures: Dict[str, int]
    join_us: Quartiles | None  # the module's own timing of a join (debug)
    debug_joined: int  # debug lines that say "joined", of debug_logins
    debug_logins: int
    # The user's records in /run/pam_unshare this part created (the lock and the socket stay
    # after the namespace has gone: a later login replaces a socket nobody answers on), removed.
    records_removed: List[str]
    mode_problems: List[str] = field(default_factory=list)
    module_log: List[str] = field(default_factory=list)


def _records(uid: int) -> List[str]:
    try:
        return sorted(name for name in os.listdir(RECORDS) if name.startswith(f"user-{uid}."))
    except FileNotFoundError:
        return []


def _remove_new_records(uid: int, before: List[str]) -> List[str]:
    removed = []
    for name in _records(uid):
        if name not in before:
            os.unlink(os.path.join(RECORDS, name))
            removed.append(name)
    return removed


def measure(env: BenchEnv, plan: Plan, seed: int, progress: Callable[[str], None]
            ) -> JoinResult:
    rng = random.Random(seed)
    mark = env.log_mark()
    problems: List[str] = []
    records_before = _records(env.uid)
    env.set_mode(True, USER_SCOPE)
    held = session.open_held(env, "su")
    try:
        if held.init is None or held.init.comm != INIT_COMM:
            raise RuntimeError(f"join: the holding session has no namespace of ours "
                               f"({held.init})")

        def check(mode: str) -> str | None:
            seen = blocks.probe(env, "su")
            joined = seen.namespace == held.namespace
            good = {"off": seen.pid1 != INIT_COMM and not seen.error,
                    "join": seen.pid1 == INIT_COMM and joined,
                    "new": seen.pid1 == INIT_COMM and not joined}[mode]
            return None if good else (f"su under {mode}: PID 1 {seen.pid1!r}, namespace "
                                      f"{seen.namespace} (holder's {held.namespace}) {seen.error}")

        modes: Dict[str, blocks.Setter] = {"off": lambda: env.set_mode(False),
                                           "join": lambda: env.set_mode(True, USER_SCOPE),
                                           "new": lambda: env.set_mode(True)}
        progress(f"join: {plan.rounds} rounds of {plan.per_round} su logins per mode")
        samples = blocks.interleaved(env, env.entry_argv("su", "true"), modes, plan.rounds,
                                     plan.per_round, rng, check, problems)
        env.set_mode(True, (*USER_SCOPE, "debug"))
        debug_mark = env.log_mark()
        blocks.run_block(env, env.entry_argv("su", "true"), plan.debug_logins, blocks.Samples())
        debug_lines = env.syslog.lines(debug_mark) if env.syslog else []
    finally:
        try:
            session.close_held(env, held)
        finally:
            removed = _remove_new_records(env.uid, records_before)
    joins = [t for t in timing.parse_all(debug_lines) if t.kind == "joined"]
    medians = {mode: statistics.median(s.ms) for mode, s in samples.items() if s.ms}
    lines = env.syslog.lines(mark) if env.syslog else []
    return JoinResult(
        rounds=plan.rounds, per_round=plan.per_round,
        latency_ms={mode: timing.quartiles(samples[mode].ms) for mode in MODES},
        added_ms={mode: medians[mode] - medians["off"] if mode in medians and "off" in medians
                  else None for mode in ("join", "new")},
        failures={mode: samples[mode].failures for mode in MODES},
        join_us=timing.quartiles([t.join_us for t in joins]),
        debug_joined=len(joins), debug_logins=plan.debug_logins,
        records_removed=removed, mode_problems=problems,
        module_log=timing.not_debug(lines)[:20])


def markdown(result: JoinResult) -> List[str]:
    def ms(mode: str) -> str:
        value = result.latency_ms.get(mode)
        return "-" if value is None else f"{value.median:.2f} ({value.p25:.2f}-{value.p75:.2f})"

    def added(mode: str) -> str:
        value = result.added_ms.get(mode)
        return "-" if value is None else f"{value * 1000:+.0f} µs"

    lines = [f"scope=user, a second login joining the user's running namespace: `su USER -c "
             f"true` while another session of the user holds it, {result.rounds} interleaved "
             f"rounds of {result.per_round} logins per mode (ms, median (p25-p75)):", "",
             "| mode | latency | added | failed |", "| --- | ---: | ---: | ---: |",
             f"| module off | {ms('off')} | | {result.failures['off']} |",
             f"| scope=user, joins the running namespace | {ms('join')} | {added('join')} | "
             f"{result.failures['join']} |",
             f"| scope=session, a new namespace | {ms('new')} | {added('new')} | "
             f"{result.failures['new']} |", ""]
    if result.join_us is not None:
        join = result.join_us
        lines.append(f"The module's own time for a join (debug line, {result.debug_joined} of "
                     f"{result.debug_logins} logins): {join.median:.0f} µs "
                     f"({join.p25:.0f}-{join.p75:.0f}).")
        lines.append("")
    for problem in result.mode_problems:
        lines += [f"Mode problem: {problem}", ""]
    for line in result.module_log:
        lines += [f"Module said: `{line}`", ""]
    return lines
