"""A /dev/log for the benchmark's sandbox, so that the module's failure lines reach the report,
with as few mounts as possible.

The tests' SyslogCapture (helpers/devlog.py) bind-mounts every entry of /dev, about a hundred
mounts here. Every session copies its caller's mount table into its new mount namespace, so those
mounts would be measured as the module's cost. This one puts a tmpfs on /dev holding bind mounts of
the few devices su, sudo and sshd open, the same symlinks, and the socket; the receiving end is the
tests' sink script. Like the tests' version it lives only in the sandbox's mount namespace, and no
mount is left inside the work directory (which is deleted afterwards).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from pam_unshare_testsupport.devlog import SINK

from pam_unshare import linux

MS_NOSUID = 0x2
# Prefix of a command line: the program gets SIGKILL when the benchmark dies, even by SIGKILL.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DIRECTORIES = ("pts", "shm", "mqueue")
SYMLINKS = ("fd", "stdin", "stdout", "stderr")


def _private_dev() -> None:
    # Handles on the real entries, opened before the tmpfs hides them.
    handles = {name: os.open(f"/dev/{name}", os.O_PATH)
               for name in (*DEVICES, *DIRECTORIES) if os.path.exists(f"/dev/{name}")}
    links = {name: os.readlink(f"/dev/{name}") for name in SYMLINKS
             if os.path.islink(f"/dev/{name}")}
    try:
        linux.mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=755")
        for name, handle in handles.items():
            source = f"/proc/self/fd/{handle}"
            if name in DIRECTORIES:
                os.mkdir(f"/dev/{name}")
                linux.bind(source, f"/dev/{name}", recursive=True)
            else:
                open(f"/dev/{name}", "w").close()
                linux.bind(source, f"/dev/{name}")
        for name, target in links.items():
            os.symlink(target, f"/dev/{name}")
        if "pts" in handles:
            # A bind-mounted ptmx cannot find its devpts; the devpts' own ptmx can.
            os.symlink("pts/ptmx", "/dev/ptmx")
    finally:
        for handle in handles.values():
            os.close(handle)


class DevLog:
    """Every message sent to /dev/log, one per line; create only inside the sandbox."""

    def __init__(self, workdir: Path) -> None:
        _private_dev()
        self.path = workdir / "syslog"
        # Its own session: a Ctrl-C at the terminal is for the benchmark, which stops the sink;
        # and killed with the benchmark if that is killed outright.
        self._sink = subprocess.Popen([*DIE_WITH_PARENT, sys.executable, "-c", SINK,
                                       str(self.path)],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        assert self._sink.stdout is not None
        if self._sink.stdout.readline().strip() != b"ready":
            raise RuntimeError("the syslog sink did not start")

    def mark(self) -> int:
        """A position; lines() from here on returns only what came later."""
        return self.path.stat().st_size if self.path.exists() else 0

    def lines(self, since: int = 0, settle: float = 0.3) -> List[str]:
        time.sleep(settle)  # the sink may not have written the last message yet
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace").splitlines()

    def stop(self) -> None:
        self._sink.kill()
        self._sink.wait()
