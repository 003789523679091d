"""The test hosts' image cache (/var/cache/pam-unshare-tests): one way to publish a built image.

Every image (the containers' root filesystems, the VM's disk, the Vagrant box) is built in a
temporary directory next to its final place and renamed into place only once complete, under a
lock file that serialises concurrent builders: an interrupted build never leaves half an image
behind, and temporary directories found while holding the lock belong to interrupted builds.

Plain Python on purpose (no pytest import).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

DEFAULT_CACHE_DIR = Path("/var/cache/pam-unshare-tests")


class CacheError(RuntimeError):
    """An image could not be built."""


def remove_tree(path: Path) -> None:
    """rm -rf *path*, but never into something mounted below it."""
    prefix = str(path.resolve()) + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix) or mountpoint == prefix[:-1]:
            raise CacheError(f"refusing to remove {path}: {mountpoint} is mounted below it")
    shutil.rmtree(path, ignore_errors=True)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def publish(cache_dir: Path, name: str, lock_name: str, ready: Callable[[Path], bool],
            build: Callable[[Path, IO[str]], None]) -> Path:
    """Return ``cache_dir/name``, first made by ``build(tmp, lock)`` in a temporary directory
    ``.tmp-<kind>-*`` (kind: NAME's first word) if ``ready(final)`` says it is not there yet.

    *build* gets the held lock file to pass on to its processes (run_logged): the build holds
    the lock as long as any of them lives, even if we are killed.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / name
    if ready(final):
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    kind = name.split("-", 1)[0]
    with open(cache_dir / lock_name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready(final):  # another builder finished meanwhile
            return final
        for stale in cache_dir.glob(f".tmp-{kind}-*"):
            remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-", dir=cache_dir))
        try:
            build(tmp, lock)
            tmp.chmod(0o755)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
    return final


def mmdebstrap(variant: str, packages: Sequence[str], hooks: Sequence[str], suite: str,
               target: Path, mirrors: Sequence[str]) -> list[str]:
    """The mmdebstrap command line for an image, in a private mount namespace: mmdebstrap's root
    mode mounts /proc, /sys and /dev below the target; if it dies without cleaning up, those
    mounts die with the namespace instead of lingering on the host."""
    return ["unshare", "--mount", "--propagation=private", "--",
            "mmdebstrap", f"--variant={variant}", "--include=" + ",".join(packages), *hooks,
            suite, str(target), *mirrors]


def run_logged(argv: Sequence[str], out: IO[bytes], lock: IO[str],
               error: type[Exception] = CacheError) -> None:
    """Run a build step with its output in the build log *out*; raise *error* if it fails."""
    out.write(f"+ {shlex.join(argv)[:300]}\n".encode())
    out.flush()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        pass_fds=(lock.fileno(),),
    )
    try:
        returncode = proc.wait()
    except BaseException:  # interrupted: stop apt and dpkg too, not just mmdebstrap
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if returncode != 0:
        # unshare ... -- mmdebstrap: name the program that failed
        program = argv[list(argv).index("--") + 1] if "--" in argv else argv[0]
        raise error(f"{program} failed (rc {returncode}); see {out.name}:\n"
                    + tail(Path(out.name)))
