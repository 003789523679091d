"""Host-side figures: memory and CPU of a process, machine-wide counts of sessions, namespaces and
mounts, and reaping what is re-parented to the benchmark."""

from __future__ import annotations

import ctypes
import os
import select
import time
from dataclasses import dataclass
from typing import Dict, Iterable, Set

from pam_unshare_testsupport import hostprocs

from pam_unshare import proc

PR_SET_CHILD_SUBREAPER = 36
P_PID = os.P_PID
WALL = 0x40000000  # __WALL: also children whose exit signal is not SIGCHLD (the session init)

_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Orphans among our descendants are re-parented to this process instead of the host's
    init, which reaps them late on this machine (seconds to minutes). That matters: a session's
    PID 1 that has exited stays until every process of its namespace is reaped, and sshd's
    session child is such a process once its parent is gone. reap_orphans() collects them, so
    neither logout times nor leftover counts measure the host's init."""
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(keep: Iterable[int] = ()) -> int:
    """Reaps our zombie children, except KEEP (processes a Popen will wait for); returns how
    many. Zombies only: a live child is never waited for here."""
    kept = set(keep)
    reaped = 0
    # Fast path, no /proc scan: the first waitable child, looked at without reaping it.
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | WALL)
        except ChildProcessError:
            return reaped
        if found is None:
            return reaped
        if found.si_pid in kept:
            break
        os.waitid(P_PID, found.si_pid, os.WEXITED | os.WNOHANG | WALL)
        reaped += 1
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in kept:
            continue
        stat = proc.read_stat(name)
        if stat is None or stat.state != "Z" or stat.ppid != me:
            continue
        try:
            os.waitid(P_PID, int(name), os.WEXITED | os.WNOHANG | WALL)
            reaped += 1
        except ChildProcessError:
            pass
    return reaped


def meminfo() -> Dict[str, int]:
    """/proc/meminfo in KiB."""
    values = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0])
    return values


def smaps_rollup(pid: int) -> Dict[str, int]:
    """Rss, Pss and the rest of /proc/PID/smaps_rollup, in KiB."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[2] == "kB":
                values[parts[0][:-1]] = int(parts[1])
    return values


@dataclass(frozen=True)
class CpuUse:
    ticks: int  # utime + stime, in clock ticks (1/CLK_TCK s)
    run_ns: int  # time on a CPU from /proc/PID/schedstat, in ns
    switches: int  # voluntary + involuntary context switches: how often it woke up

    def minus(self, other: CpuUse) -> CpuUse:
        return CpuUse(self.ticks - other.ticks, self.run_ns - other.run_ns,
                      self.switches - other.switches)


def cpu_use(pid: int) -> CpuUse:
    stat = proc.read_stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    with open(f"/proc/{pid}/schedstat") as handle:
        run_ns = int(handle.read().split()[0])
    status = proc.status_fields(pid)
    switches = (int(status["voluntary_ctxt_switches"])
                + int(status["nonvoluntary_ctxt_switches"]))
    return CpuUse(stat.cpu_ticks, run_ns, switches)


def _namespace_links(kind: str) -> Set[str]:
    links = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                links.add(os.readlink(f"/proc/{name}/ns/{kind}"))
            except OSError:
                pass
    return links


def machine_counts() -> Dict[str, int]:
    """What a leak would raise, machine-wide: running session inits (anybody's), distinct PID and
    mount namespaces in use, processes, and the mounts this process sees."""
    with open("/proc/self/mountinfo") as handle:
        mounts = sum(1 for _ in handle)
    return {
        "session_inits": len(hostprocs.session_inits()),
        "pid_namespaces": len(_namespace_links("pid")),
        "mount_namespaces": len(_namespace_links("mnt")),
        "processes": sum(1 for name in os.listdir("/proc") if name.isdigit()),
        "mounts": mounts,
    }


def live_namespaces(namespaces: Iterable[int], started_by: int) -> Set[int]:
    """Those of NAMESPACES that some process started by STARTED_BY (see hostprocs.now_ticks)
    still belongs to, zombies included. Once a namespace is gone the kernel gives its number to
    the next new one, anybody's (other runs share this machine): later processes do not count."""
    wanted = set(namespaces)
    alive = set()
    for process in hostprocs.processes():
        if process.nested and process.start <= started_by:
            namespace = proc.pid_namespace(process.pid)
            if namespace in wanted:
                alive.add(namespace)
    return alive


class ExitWatch:
    """Times the exits of a few processes: a pidfd per process (readable once it has exited and
    its thread group is empty), polled with a 1 ms timeout, and /proc/PID/stat checked on every
    pass for PF_EXITING (a session's PID 1 that has called exit stays until its namespace has been
    reaped)."""

    def __init__(self, pids: Dict[str, int]) -> None:
        self.fds = {name: os.pidfd_open(pid) for name, pid in pids.items()}
        self.pids = dict(pids)
        self.exited_ns: Dict[str, int] = {}  # perf_counter_ns when the pidfd became readable
        self.exiting_ns: Dict[str, int] = {}  # ... when PF_EXITING (or the zombie state) showed

    def _exiting(self, pid: int) -> bool:
        stat = proc.read_stat(pid)
        return stat is None or stat.state in ("Z", "X") or bool(stat.flags & proc.PF_EXITING)

    def wait(self, names: Iterable[str], timeout: float = 30.0) -> bool:
        """Until every process in NAMES has exited; False on timeout."""
        wanted = set(names)
        poller = select.poll()
        for name in wanted - set(self.exited_ns):
            poller.register(self.fds[name], select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            ready = {fd for fd, _ in poller.poll(0)}
            now = time.perf_counter_ns()
            for name in wanted - set(self.exited_ns):
                if self.fds[name] in ready:
                    self.exited_ns[name] = now
                    self.exiting_ns.setdefault(name, now)
                    poller.unregister(self.fds[name])
            for name in wanted - set(self.exiting_ns):
                if self._exiting(self.pids[name]):
                    self.exiting_ns[name] = now
            if wanted <= set(self.exited_ns):
                return True
            if time.monotonic() > deadline:
                return False
            poller.poll(1)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _cpu_ticks_of(pid: int) -> int:
    """utime + stime + cutime + cstime of PID: its CPU and that of its reaped children."""
    stat = proc.read_stat(pid)
    return 0 if stat is None else stat.cpu_ticks + stat.children_ticks


class CpuMeter:
    """How busy the machine was over an interval, and how much of that was not this benchmark:
    the figure that says whether a run was disturbed (other jobs share these machines)."""

    def __init__(self, extra_pids: Iterable[int] = ()) -> None:
        self.extra_pids = list(extra_pids)  # long-lived helpers we do not reap (sshd)
        self.start = self._sample()

    def _sample(self) -> Dict[str, float]:
        with open("/proc/stat") as handle:
            values = [int(value) for value in handle.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        idle = values[3] + values[4]
        times = os.times()
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "wall": time.monotonic(),
            "busy": (sum(values[:8]) - idle) / ticks,
            "steal": values[7] / ticks,
            "ours": times.user + times.system + times.children_user + times.children_system
                    + sum(_cpu_ticks_of(pid) for pid in self.extra_pids) / ticks,
        }

    def stop(self) -> Dict[str, float]:
        end = self._sample()
        wall = end["wall"] - self.start["wall"]
        used = {key: (end[key] - self.start[key]) / wall for key in ("busy", "steal", "ours")}
        return {"seconds": round(wall, 1), "cpus": len(os.sched_getaffinity(0)),
                "busy_cpus": round(used["busy"], 2), "ours_cpus": round(used["ours"], 2),
                "others_cpus": round(max(0.0, used["busy"] - used["ours"]), 2),
                "steal_cpus": round(used["steal"], 2)}
