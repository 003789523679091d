"""Captures syslog inside the test sandbox: a private /dev whose /dev/log is our socket.

Tests check the module's log lines, and this machine runs no syslog daemon. The private /dev is a
tmpfs holding bind mounts of every entry of the real /dev (bubblewrap does the same), so only the
sandbox's mount namespace sees the socket; the host's /dev is not written. The receiving end is a
small child process, not a thread: a threaded pytest could no longer change mount namespace.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

from pam_unshare import linux

MNT_DETACH = 2
SINK = r"""
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
os.chmod("/dev/log", 0o666)
out = open(sys.argv[1], "ab", buffering=0)
print("ready", flush=True)
while True:
    out.write(sock.recv(65536).replace(b"\n", b" ") + b"\n")
"""


def _private_dev(workdir: Path) -> None:
    real = workdir / "real-dev"
    real.mkdir()
    linux.bind("/dev", str(real), recursive=True)
    linux.mount("tmpfs", "/dev", "tmpfs", 0x2, "mode=755")  # MS_NOSUID
    for entry in os.scandir(real):
        target = f"/dev/{entry.name}"
        if entry.name == "log":
            continue
        if entry.name == "ptmx":
            # A bind-mounted ptmx cannot find its devpts; the devpts' own ptmx can.
            os.symlink("pts/ptmx", target)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
            linux.bind(entry.path, target, recursive=True)
        else:
            open(target, "w").close()
            linux.bind(entry.path, target)
    # The binds stand on their own; no mount may stay inside the work directory, which is
    # deleted later.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(real).encode(), MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), f"umount {real}")


class SyslogCapture:
    """Every message sent to /dev/log, one per line; create only inside the sandbox."""

    def __init__(self, workdir: Path) -> None:
        _private_dev(workdir)
        self.path = workdir / "syslog"
        self._sink = subprocess.Popen([sys.executable, "-c", SINK, str(self.path)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._sink.stdout is not None
        if self._sink.stdout.readline().strip() != b"ready":
            raise RuntimeError("the syslog sink did not start")

    def mark(self) -> int:
        """A position; lines() from here on returns only what came later."""
        return self.path.stat().st_size if self.path.exists() else 0

    def lines(self, since: int = 0, settle: float = 0.3) -> list[str]:
        # syslog(3) has sent before the logging process exits, but the sink may not have written
        # it yet: give it a moment. A missing line is then a failure, not a race.
        time.sleep(settle)
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace").splitlines()

    def stop(self) -> None:
        self._sink.kill()
        self._sink.wait()
