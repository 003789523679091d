"""The module's own timing of a login: its `debug` line, parsed; and quartiles of samples.

With the option `debug` the module logs, per login, at debug level (to the sandbox's /dev/log):
    user U: session init runs as pid P, /proc mounted, caller joined (TIMING)
where TIMING is one of
    child 400 us (clone 100, identity 11, ..., exec 60), init ready 5 us, join 15 us
    child 900 us (not suspended: procfs mounts to cover), init ready 5 us, join 15 us
    joined the user's namespace, join 15 us            (scope=user, a namespace that runs)
"child" is from before clone() to the caller running again and is the sum of its phases.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

PHASES = ("clone", "identity", "mounts", "procfs", "program", "fds", "privileges", "exec")
LINE = re.compile(r"pam_unshare\((?P<service>[^:)]+):session\): user \S+: session init runs as "
                  r"pid \d+, /proc mounted, caller joined \((?P<timing>.*)\)\s*$")
CHILD = re.compile(r"^child (\d+) us \((.*)\), init ready (\d+) us, join (\d+) us$")
JOINED = re.compile(r"^joined the user's namespace, join (\d+) us$")
NOT_SUSPENDED = "not suspended: procfs mounts to cover"
# A datagram as syslog(3) sends it starts "<PRIORITY>" (facility * 8 + severity).
SYSLOG_PRIORITY = re.compile(r"^<(\d+)>")
DEBUG = 7


@dataclass(frozen=True)
class LoginTiming:
    service: str
    kind: str  # "suspended" (phases timed), "unsuspended" or "joined"
    join_us: int
    child_us: int = 0
    ready_us: int = 0
    phases_us: Dict[str, int] = field(default_factory=dict)

    @property
    def total_us(self) -> int:
        """What the module timed of this login: clone to caller joined."""
        return self.child_us + self.ready_us + self.join_us


def parse(line: str) -> LoginTiming | None:
    """The timing in LINE, or None if LINE is not the module's per-login debug line."""
    match = LINE.search(line)
    if match is None:
        return None
    service, timing = match.group("service"), match.group("timing")
    joined = JOINED.match(timing)
    if joined:
        return LoginTiming(service, "joined", int(joined.group(1)))
    child = CHILD.match(timing)
    if child is None:
        raise ValueError(f"unknown timing in the module's debug line: {timing!r}")
    child_us, inner, ready_us, join_us = (int(child.group(1)), child.group(2),
                                          int(child.group(3)), int(child.group(4)))
    if inner == NOT_SUSPENDED:
        return LoginTiming(service, "unsuspended", join_us, child_us, ready_us)
    phases = {}
    for part in inner.split(", "):
        name, value = part.rsplit(" ", 1)
        phases[name] = int(value)
    return LoginTiming(service, "suspended", join_us, child_us, ready_us, phases)


def parse_all(lines: Sequence[str]) -> List[LoginTiming]:
    return [timing for timing in map(parse, lines) if timing is not None]


def not_debug(lines: Sequence[str]) -> List[str]:
    """The module's lines above debug level (failures, warnings): what `debug` adds is left out."""
    out = []
    for line in lines:
        priority = SYSLOG_PRIORITY.match(line)
        if "pam_unshare(" in line and not (priority and int(priority.group(1)) % 8 == DEBUG):
            out.append(line)
    return out


@dataclass(frozen=True)
class Quartiles:
    n: int
    p25: float
    median: float
    p75: float


def quartiles(values: Sequence[float]) -> Quartiles | None:
    if not values:
        return None
    if len(values) == 1:
        return Quartiles(1, values[0], values[0], values[0])
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return Quartiles(len(values), p25, median, p75)


def phase_quartiles(timings: Sequence[LoginTiming]) -> Dict[str, Quartiles]:
    """Per phase (suspended logins only), and child, init ready, join and total (all)."""
    out: Dict[str, Quartiles] = {}
    suspended = [t for t in timings if t.kind == "suspended"]
    for phase in PHASES:
        found = quartiles([t.phases_us[phase] for t in suspended if phase in t.phases_us])
        if found:
            out[phase] = found
    started = [t for t in timings if t.kind != "joined"]
    for name, values in (("child", [t.child_us for t in started]),
                         ("init ready", [t.ready_us for t in started]),
                         ("join", [t.join_us for t in timings]),
                         ("total", [t.total_us for t in timings])):
        found = quartiles(values)
        if found:
            out[name] = found
    return out
