"""The test host's processes as its root sees them, on whatever host the suite runs against.

Every question is answered from one snapshot taken on the host by the support package's
hostprocs.py (copied there for remote hosts) and returned as JSON through testinfra, so the
same test code serves this machine, a container and a VM. The rules are those of hostprocs: a
process is its PID together with its start time, and a namespace's number only identifies it
among processes started before it was known to be alive (see hostprocs.in_namespace).
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, TypeVar

from pam_unshare_testsupport.hostprocs import HostProcess
from testinfra.host import Host

from pam_unshare.proc import INIT_COMM

T = TypeVar("T")


@dataclass(frozen=True)
class Process(HostProcess):
    """A HostProcess as the snapshot saw it, with what the tests ask of it besides."""

    pidns: int | None
    cmdline: Tuple[str, ...]
    tags: Tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    now: int  # clock ticks since boot, the unit of Process.start
    own_pidns: int  # the PID namespace of a root shell on the host: the callers' one
    processes: Tuple[Process, ...]

    def tagged(self, tag: str) -> List[Process]:
        """Running processes whose environment carries TAG (hostprocs.tag_assignment)."""
        return [p for p in self.processes if tag in p.tags and not p.exited]

    def find(self, process: Process) -> Process | None:
        """PROCESS in this snapshot, unless it is gone (its PID recycled counts as gone)."""
        for candidate in self.processes:
            if candidate.pid == process.pid and candidate.start == process.start:
                return candidate
        return None

    def in_namespace(self, namespace: int, started_by: int | None = None,
                     include_zombies: bool = False) -> List[Process]:
        return [p for p in self.processes
                if p.nested and (include_zombies or not p.zombie)
                and (started_by is None or p.start <= started_by) and p.pidns == namespace]

    def namespace_init(self, namespace: int) -> Process | None:
        for process in self.in_namespace(namespace):
            if process.is_namespace_init and not process.exited:
                return process
        return None

    def session_inits(self) -> List[Process]:
        return [p for p in self.processes
                if p.comm == INIT_COMM and p.is_namespace_init and not p.exited]


class HostView:
    def __init__(self, host: Host, python: str, hostprocs: str) -> None:
        self.host = host
        self.command = f"{shlex.quote(python)} {shlex.quote(hostprocs)}"

    def _run(self, *args: str) -> str:
        result = self.host.run(f"{self.command} {shlex.join(args)}")
        assert result.rc == 0, f"hostprocs {args} failed on the host: {result.stderr}"
        return result.stdout

    def snapshot(self) -> Snapshot:
        data = json.loads(self._run("snapshot"))
        processes = tuple(
            Process(pid=row["pid"], comm=row["comm"], state=row["state"], flags=row["flags"],
                    cpu_ticks=row["cpu_ticks"], start=row["start"], nspid=tuple(row["nspid"]),
                    pidns=row["pidns"], cmdline=tuple(row["cmdline"]), tags=tuple(row["tags"]))
            for row in data["processes"])
        return Snapshot(now=data["now"], own_pidns=data["self_pidns"], processes=processes)

    def now_ticks(self) -> int:
        return self.snapshot().now

    def kill(self, process: Process, sig: int = signal.SIGKILL) -> None:
        """SIG to PROCESS if it is still that process (hostprocs kills through a pidfd)."""
        self._run("kill", str(process.pid), str(process.start), str(int(sig)))

    def kill_namespace(self, namespace: int, started_by: int) -> None:
        """Cleanup: SIGKILL what runs in NAMESPACE (started by STARTED_BY), PID 1 first."""
        for process in sorted(self.snapshot().in_namespace(namespace, started_by=started_by),
                              key=lambda p: not p.is_namespace_init):
            self.kill(process)

    def kill_tagged(self, tag: str) -> None:
        for process in self.snapshot().tagged(tag):
            self.kill(process)

    def status_fields(self, pid: int) -> Dict[str, str]:
        return json.loads(self._run("status", str(pid)))

    def wait_for(self, probe: Callable[[Snapshot], T], timeout: float = 30.0,
                 interval: float = 0.1) -> T:
        """PROBE over fresh snapshots until it returns something true or TIMEOUT seconds have
        passed; returns the last result, for the caller to assert on."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe(self.snapshot())
            if result or time.monotonic() >= deadline:
                return result
            time.sleep(interval)

    def wait_until_none(self, probe: Callable[[Snapshot], List[T]], timeout: float = 30.0,
                        interval: float = 0.1) -> List[T]:
        """PROBE over fresh snapshots until it returns an empty list or TIMEOUT seconds have
        passed; returns the last list (empty on success)."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe(self.snapshot())
            if not result or time.monotonic() >= deadline:
                return result
            time.sleep(interval)
