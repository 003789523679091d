"""Captures syslog inside a sandbox (the tests' and the benchmarks'): a private /dev whose
/dev/log is our socket.

Tests check the module's log lines, the benchmarks report its failure lines, and this machine
runs no syslog daemon. The private /dev is a tmpfs, so only the sandbox's mount namespace sees
the socket and the host's /dev is not written. For the tests it holds bind mounts of every entry
of the real /dev (bubblewrap does the same); the benchmarks ask for few_mounts: only the few
devices su, sudo and sshd open, since every session copies its caller's mount table into its new
mount namespace and a hundred mounts would be measured as the module's cost. No mount is left
inside the work directory (deleted afterwards). The receiving end is a small child process, not a
thread: a threaded pytest could no longer change mount namespace.
"""

from __future__ import annotations

import ctypes
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from pam_unshare import linux

MNT_DETACH = 2
# A datagram as syslog(3) sends it: "<PRIORITY>..." (facility * 8 + severity).
SYSLOG_LINE = re.compile(r"^<(\d+)>")
# Prefix of a command line: the program gets SIGKILL when its parent dies, even by SIGKILL.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
PTMX_MAJOR, PTMX_MINOR = 5, 2
# few_mounts: what su, sudo and sshd open.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DIRECTORIES = ("pts", "shm", "mqueue")
SYMLINKS = ("fd", "stdin", "stdout", "stderr")
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


def _private_dev(workdir: Path, few_mounts: bool) -> None:
    real = workdir / "real-dev"
    real.mkdir()
    linux.bind("/dev", str(real), recursive=True)
    linux.mount("tmpfs", "/dev", "tmpfs", linux.MS_NOSUID, "mode=755")
    wanted = {*DEVICES, *DIRECTORIES, *SYMLINKS, "ptmx"}
    for entry in os.scandir(real):
        target = f"/dev/{entry.name}"
        if entry.name == "log" or few_mounts and entry.name not in wanted:
            continue
        if entry.name == "ptmx":
            # A bind-mounted ptmx cannot find its devpts; a node of this /dev finds the one bound
            # at /dev/pts. Not a symlink to pts/ptmx: that node is mode 000 where devpts has no
            # ptmxmode, and only root could open a pty (QEMU under libvirt could not).
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(PTMX_MAJOR, PTMX_MINOR))
            os.chmod(target, 0o666)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
            linux.bind(entry.path, target, recursive=True)
        else:
            open(target, "w").close()
            linux.bind(entry.path, target)
    # The binds stand on their own; no mount may stay inside the work directory.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(real).encode(), MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), f"umount {real}")


class SyslogCapture:
    """Every message sent to /dev/log, one per line; create only inside the sandbox.

    own_session: the sink runs in a session of its own (a Ctrl-C at the terminal is for the
    caller, which stops the sink) and dies with its parent if that is killed outright."""

    def __init__(self, workdir: Path, few_mounts: bool = False,
                 own_session: bool = False) -> None:
        _private_dev(workdir, few_mounts)
        self.path = workdir / "syslog"
        prefix = DIE_WITH_PARENT if own_session else []
        self._sink = subprocess.Popen([*prefix, sys.executable, "-c", SINK, str(self.path)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      start_new_session=own_session)
        assert self._sink.stdout is not None
        if self._sink.stdout.readline().strip() != b"ready":
            raise RuntimeError("the syslog sink did not start")

    def mark(self) -> int:
        """A position; lines() from here on returns only what came later."""
        return self.path.stat().st_size if self.path.exists() else 0

    def lines(self, since: int = 0, settle: float = 0.3) -> List[str]:
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


def module_lines(lines: List[str]) -> List[str]:
    """The module's own lines among LINES (pam_syslog writes "pam_unshare(SERVICE:TYPE)")."""
    return [line for line in lines if "pam_unshare(" in line]


def severity(line: str) -> int:
    match = SYSLOG_LINE.match(line)
    assert match, f"not a syslog datagram: {line!r}"
    return int(match.group(1)) % 8
