"""N concurrent su sessions, each holding a sleeping process: open them all, measure, close them
all, and count what is left.

Each session's shell prints the comm of its PID 1 on a pipe shared by all sessions (one short
line, written atomically) and then execs `sleep`; a session counts as open once its line has
arrived, and as isolated when that line says pam_unshare. Every process of the run carries a tag
in its environment (su passes it on), which is how they are found, stopped and, after Ctrl-C,
killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

from pam_unshare_testsupport import hostprocs

from pam_unshare.proc import INIT_COMM
from pubench import procs
from pubench.env import USER, BenchEnv
from pubench.latency import PROBE

SLEEP = ["sleep", "86400"]
KERNEL_FIELDS = ("Slab", "KernelStack", "PageTables")


def _pss_total(pids: List[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += procs.smaps_rollup(pid)["Pss"]
        except (OSError, KeyError):
            pass
    return total


def _read_lines(fd: int, wanted: int, callers: List[subprocess.Popen], timeout: float
                ) -> List[str]:
    """Lines from FD until WANTED have come, or every caller that has not written one exited."""
    os.set_blocking(fd, False)
    buffer = b""
    deadline = time.monotonic() + timeout
    while buffer.count(b"\n") < wanted and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            continue
        exited = sum(1 for caller in callers if caller.poll() is not None)
        if buffer.count(b"\n") + exited >= wanted:
            break
    return buffer.decode(errors="replace").splitlines()


def _pidfds(pids: Iterable[int]) -> List[int]:
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:  # already gone
            pass
    return fds


def _wait_exits(fds: List[int], deadline: float) -> int:
    """Blocks until every process behind the pidfds FDS has exited, or DEADLINE (monotonic);
    returns how many had not."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left = len(fds)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for fd, _ in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left -= 1
    return left


def _inits_by_namespace(namespaces: Set[int]) -> Dict[int, hostprocs.HostProcess]:
    found = {}
    for process in hostprocs.processes():
        if process.is_namespace_init and not process.exited:
            namespace = hostprocs.pid_namespace(process.pid)
            if namespace in namespaces:
                found[namespace] = process
    return found


@dataclass
class Batch:
    """N su sessions opened at once, each holding a tagged sleep."""
    n: int
    on: bool
    tag: str
    mark: int  # syslog position before the first login
    errors: Path  # the callers' stderr
    callers: List[subprocess.Popen]
    lines: List[str]  # each session's PID 1 comm, as its shell printed it
    spawn_seconds: float
    open_seconds: float
    sleepers: List[hostprocs.HostProcess] = field(default_factory=list)
    namespaces: Set[int] = field(default_factory=set)
    known_at: int = 0  # now_ticks() once the namespaces were known
    inits: Dict[int, hostprocs.HostProcess] = field(default_factory=dict)

    @property
    def isolated(self) -> int:
        return sum(1 for line in self.lines if line == INIT_COMM)


@dataclass
class Closed:
    callers_seconds: float
    all_seconds: float
    stuck_callers: int
    stuck_inits: int
    left_processes: int
    left_namespaces: int


def open_batch(env: BenchEnv, n: int, on: bool, timeout: float,
               options: Tuple[str, ...] = ()) -> Batch:
    """Opens N su sessions at once (module ON, with max_sessions=0 and OPTIONS) and waits until
    each has printed its line or failed, then a second for them to settle."""
    # One user holds all N sessions: past the default max_sessions (256) on purpose.
    env.set_mode(on, ("max_sessions=0", *options))
    env.reap()
    tag = env.new_tag()
    environment = {**os.environ, hostprocs.TAG_VARIABLE: tag}
    command = f"{PROBE}; exec {' '.join(SLEEP)}"
    read_fd, write_fd = os.pipe()
    callers: List[subprocess.Popen] = []
    mark = env.log_mark()
    errors = env.workdir / f"scale-{n}-{'on' if on else 'off'}-{tag}.stderr"
    started = time.perf_counter()
    try:
        try:
            with open(errors, "wb") as stderr:
                for _ in range(n):
                    caller = subprocess.Popen(["su", USER, "-c", command],
                                              stdin=subprocess.DEVNULL, stdout=write_fd,
                                              stderr=stderr, cwd="/", env=environment)
                    callers.append(caller)
                    env.popens.append(caller)
        finally:
            os.close(write_fd)
        spawned = time.perf_counter() - started
        lines = _read_lines(read_fd, n, callers, timeout)
    finally:
        os.close(read_fd)
    batch = Batch(n, on, tag, mark, errors, callers, lines, spawned,
                  time.perf_counter() - started)
    time.sleep(1)  # let the last sessions settle before reading memory

    batch.sleepers = [process for process in hostprocs.tagged(tag)
                      if hostprocs.cmdline(process.pid) == SLEEP]
    own = hostprocs.pid_namespace(os.getpid())
    for sleeper in batch.sleepers:
        namespace = hostprocs.pid_namespace(sleeper.pid)
        if namespace is not None and namespace != own:
            batch.namespaces.add(namespace)
            env.remember_namespace(namespace)
    batch.known_at = hostprocs.now_ticks()
    batch.inits = _inits_by_namespace(batch.namespaces) if on else {}
    return batch


def close_batch(env: BenchEnv, batch: Batch, timeout: float) -> Closed:
    """Stops every sleep, as a user ending the command would; waits for the callers and the
    session inits to exit, then for leftovers to go (10 s at most)."""
    callers = batch.callers
    caller_fds = _pidfds(caller.pid for caller in callers if caller.poll() is None)
    init_fds = _pidfds(init.pid for init in batch.inits.values())
    closing = time.perf_counter()
    deadline = time.monotonic() + timeout
    try:
        for sleeper in batch.sleepers:
            hostprocs.kill(sleeper, signal.SIGTERM)
        stuck_callers = _wait_exits(caller_fds, deadline)
        callers_done = time.perf_counter() - closing
        stuck_inits = _wait_exits(init_fds, deadline)
        closed_seconds = time.perf_counter() - closing
    finally:
        for fd in caller_fds + init_fds:
            os.close(fd)
    for caller in callers:
        if caller.poll() is None and not stuck_callers:
            caller.wait()

    # Leftovers, once the re-parented inits are reaped; wait a little for stragglers.
    settle_deadline = time.monotonic() + 10
    while True:
        env.reap()
        left_processes = hostprocs.tagged(batch.tag) + [
            init for init in batch.inits.values() if hostprocs.refresh(init) is not None]
        left_namespaces = procs.live_namespaces(batch.namespaces, batch.known_at)
        if (not left_processes and not left_namespaces) or time.monotonic() > settle_deadline:
            break
        time.sleep(0.1)
    for caller in callers:
        if caller.poll() is not None:
            env.popens.remove(caller)
    return Closed(callers_done, closed_seconds, stuck_callers, stuck_inits,
                  len(left_processes), len(left_namespaces))


def run(env: BenchEnv, n: int, on: bool, timeout: float) -> Dict[str, object]:
    env.reap()
    before = procs.machine_counts()
    memory_before = procs.meminfo()
    batch = open_batch(env, n, on, timeout)
    callers, sleepers, inits = batch.callers, batch.sleepers, batch.inits
    init_pss = init_rss = 0
    for init in inits.values():
        rollup = procs.smaps_rollup(init.pid)
        init_pss += rollup["Pss"]
        init_rss += rollup["Rss"]
    # Userspace memory of the whole sessions: su, the user's sleep and (module on) PID 1.
    session_pss = init_pss + _pss_total([caller.pid for caller in callers if caller.poll() is None]
                                        + [sleeper.pid for sleeper in sleepers])
    memory_during = procs.meminfo()
    during = procs.machine_counts()

    # Callers that ended before we stopped anything: failed sessions.
    early = Counter(caller.returncode for caller in callers if caller.poll() is not None)
    open_errors = batch.errors.read_text(errors="replace")[-2000:]
    closed = close_batch(env, batch, timeout)
    after = procs.machine_counts()

    lines, isolated = batch.lines, batch.isolated
    opened = len(lines) if not on else isolated
    return {
        "n": n,
        "mode": "on" if on else "off",
        "spawn_seconds": round(batch.spawn_seconds, 3),
        "open_all_seconds": round(batch.open_seconds, 3),
        "opened": opened,
        "isolated": isolated,
        "failed": n - opened,
        "held_sleeps": len(sleepers),
        "session_namespaces": len(batch.namespaces),
        "inits_found": len(inits),
        "init_pss_kib_total": init_pss,
        "init_rss_kib_total": init_rss,
        "memavailable_drop_kib": memory_before["MemAvailable"] - memory_during["MemAvailable"],
        # Kernel memory the sessions hold (namespaces, mounts, /proc instances, stacks, page
        # tables), less noisy than MemAvailable, which moves with everybody's page cache.
        "kernel_kib": sum(memory_during[key] - memory_before[key] for key in KERNEL_FIELDS),
        "meminfo_delta_kib": {key: memory_during[key] - memory_before[key]
                              for key in ("MemAvailable", "MemFree", "Cached", *KERNEL_FIELDS)},
        "session_pss_kib_total": session_pss,
        "close_callers_seconds": round(closed.callers_seconds, 3),
        "close_all_seconds": round(closed.all_seconds, 3),
        "stuck_callers": closed.stuck_callers,
        "stuck_inits": closed.stuck_inits,
        "early_caller_exits": {str(rc): count for rc, count in early.items()},
        # What the sessions saw as their PID 1, other than ours (module on: must be empty).
        "other_pid1": dict(Counter(line for line in lines if line != INIT_COMM)) if on else {},
        "caller_stderr": open_errors,
        "module_log": env.module_log(batch.mark),
        "leftover": {
            "processes": closed.left_processes,
            "pid_namespaces": closed.left_namespaces,
            "mounts": after["mounts"] - before["mounts"],
        },
        "machine_before": before,
        "machine_during": during,
        "machine_after": after,
    }
