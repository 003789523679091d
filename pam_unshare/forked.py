"""Work in a forked child that reports through a pipe: the kernel probe (system), verify's PAM
sessions, the tests' PAM loop. A process that opened a PAM session or unshared has joined new
namespaces: such work must not run in the caller."""

from __future__ import annotations

import os
import select
import signal
import time
from typing import Callable, Tuple

# own_group: how long a busy child gets after SIGTERM to its group, then after SIGKILL.
GRACE = 30.0


def run(work: Callable[[int], int], timeout: float | None = None,
        own_group: bool = False) -> Tuple[bytes, int]:
    """Forks a child that runs WORK(FD) and exits with what it returns (1 if it raises). Returns
    everything written to FD, read until every holder has closed it, and the child's exit code
    (os.waitstatus_to_exitcode).

    OWN_GROUP: the child leads a process group of its own. TIMEOUT: TimeoutError when FD is still
    open after TIMEOUT seconds. However the caller leaves (a timeout, Ctrl-C), the child is
    reaped; with OWN_GROUP a busy one first gets SIGTERM, then SIGKILL, to its group."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(reader)
            if own_group:
                os.setpgid(0, 0)
            code = work(writer)
        finally:
            os._exit(code)
    os.close(writer)
    if own_group:
        try:
            os.setpgid(child, child)
        except OSError:
            pass  # it did so itself, or is gone already
    chunks = []
    status = 0
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the child did not finish within {timeout} s")
                if not select.select([reader], [], [], left)[0]:
                    continue
            chunk = os.read(reader, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(reader)
        status = _reap(child) if own_group else os.waitpid(child, 0)[1]
    return b"".join(chunks), os.waitstatus_to_exitcode(status)


def _reap(child: int) -> int:
    """Waits for CHILD, the leader of its process group; if it is still busy (the caller was
    interrupted, or what it runs hung), SIGTERM to the group, then SIGKILL. Returns the wait
    status."""
    for signum, grace in ((None, 0.0), (signal.SIGTERM, GRACE), (signal.SIGKILL, GRACE)):
        if signum is not None:
            try:
                os.killpg(child, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while True:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                return status
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    return os.waitpid(child, 0)[1]
