"""The user manager (`systemd --user`, PAM service systemd-user): closing it as a way around.

PID 1 opens the systemd-user session in the very process that then execs `systemd --user`. The
module namespaces the caller's future children, never the caller itself, so a line of ours in
that stack breaks the manager (it is left in the host's PID namespace under the session's mount
namespace, without /proc/self; measured: `user@UID.service` fails with 203/EXEC) instead of
covering it. What does cover it is systemd's own mount namespacing of the unit: a drop-in for
user@.service with ProtectProc=invisible gives the manager, and every service, timer and
`systemd-run --user` it starts, a procfs that shows only the user's own processes (hidepid=
applies per procfs instance since Linux 5.8, so the host's /proc is untouched). That is weaker
than a PID namespace and the README says how: other users' processes exist for kill(2) (EPERM,
not ESRCH), and their PIDs show in cgroupfs, but never their command lines or environment.

The drop-in is a file of ours, written like PAM files: atomically, relative to an open directory
checked to be root's, never through a symlink.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

from pam_unshare import atomic, proc
from pam_unshare.errors import Failed, Refused

SERVICE = "systemd-user"
UNIT = "user@.service"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DROPIN_DIR = f"{UNIT}.d"
DROPIN_NAME = "pam-unshare.conf"
DROPIN_TEXT = """\
# Written by `pam-unshare enable systemd-user`; `pam-unshare disable systemd-user` removes it.
# The user manager and everything it starts (user services, timers, systemd-run --user) get a
# /proc that shows only the user's own processes: PID 1 runs the manager in the process that
# opened its PAM session, so pam_unshare.so cannot give it a PID namespace of its own.
[Service]
ProtectProc=invisible
"""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class DropIn:
    path: Path
    before: str | None  # None: no file
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def unit_exists() -> bool:
    """Whether this host has systemd's user@.service, i.e. user managers to cover."""
    return any(Path(d, UNIT).exists() for d in ("/usr/lib/systemd/system", "/lib/systemd/system"))


def dropin_path(unit_dir: Path = DEFAULT_UNIT_DIR) -> Path:
    return unit_dir / DROPIN_DIR / DROPIN_NAME


@contextlib.contextmanager
def _open_dir(path: Path) -> Iterator[int | None]:
    """PATH opened without following a symlink, after checking that only root can change it.
    Yields None when it does not exist."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        yield None
        return
    except OSError as error:
        raise Refused(f"{path}: cannot open it as a directory of root's ({error.strerror}); "
                      f"nothing written") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Refused(f"{path}: not a directory only root can write to (owner uid "
                          f"{info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); nothing written")
        yield fd
    finally:
        os.close(fd)


def _read_at(directory: int | None, name: str) -> str | None:
    if directory is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Refused(f"{DROPIN_DIR}/{name}: cannot read it ({error.strerror}); nothing "
                      f"written") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise Refused(f"{DROPIN_DIR}/{name}: not a regular file; nothing written")
        return handle.read().decode(errors="replace")


def read(unit_dir: Path = DEFAULT_UNIT_DIR) -> str | None:
    """The drop-in's text, or None when there is none."""
    if not unit_dir.is_dir():
        return None
    with _open_dir(unit_dir) as base:
        if base is None:
            return None
        try:
            sub = os.open(DROPIN_DIR, _DIR_FLAGS, dir_fd=base)
        except FileNotFoundError:
            return None
        try:
            return _read_at(sub, DROPIN_NAME)
        finally:
            os.close(sub)


def is_installed(unit_dir: Path = DEFAULT_UNIT_DIR) -> bool:
    return read(unit_dir) == DROPIN_TEXT


def _reload(unit_dir: Path) -> str | None:
    """Makes systemd read the change, when it is the running systemd's directory; returns a note
    on what the reload does not do."""
    if unit_dir != DEFAULT_UNIT_DIR or not Path("/run/systemd/system").is_dir():
        return None
    result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise Failed(f"systemctl daemon-reload failed: {result.stderr.strip()}")
    running = managers_without_it()
    if running:
        names = ", ".join(f"user@{uid}.service" for uid in running)
        return (f"{SERVICE}: user managers started before this keep their view until they "
                f"restart: {names} (systemctl restart user@UID.service, or the user's next "
                f"first login)")
    return None


def enable(unit_dir: Path = DEFAULT_UNIT_DIR, dry_run: bool = False) -> tuple[DropIn, str | None]:
    path = dropin_path(unit_dir)
    if not unit_dir.is_dir():
        raise Refused(f"{unit_dir}: no such directory (is systemd installed?); nothing written")
    before = read(unit_dir)
    change = DropIn(path, before, DROPIN_TEXT)
    if dry_run or not change.changed:
        return change, None
    with _open_dir(unit_dir) as base:
        assert base is not None
        with contextlib.suppress(FileExistsError):
            os.mkdir(DROPIN_DIR, 0o755, dir_fd=base)
        sub = os.open(DROPIN_DIR, _DIR_FLAGS, dir_fd=base)
        try:
            info = os.fstat(sub)
            if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise Refused(f"{path.parent}: not a directory only root can write to; "
                              f"nothing written")
            atomic.replace_at(sub, DROPIN_NAME, DROPIN_TEXT.encode(), 0o644, 0, 0)
        finally:
            os.close(sub)
    return change, _reload(unit_dir)


def disable(unit_dir: Path = DEFAULT_UNIT_DIR, dry_run: bool = False) -> DropIn:
    path = dropin_path(unit_dir)
    before = read(unit_dir)
    change = DropIn(path, before, None)
    if dry_run or before is None:
        return change
    with _open_dir(unit_dir) as base:
        assert base is not None
        sub = os.open(DROPIN_DIR, _DIR_FLAGS, dir_fd=base)
        try:
            os.unlink(DROPIN_NAME, dir_fd=sub)
            os.fsync(sub)
        finally:
            os.close(sub)
        with contextlib.suppress(OSError):  # kept when it holds other drop-ins
            os.rmdir(DROPIN_DIR, dir_fd=base)
    _reload(unit_dir)
    return change


_HIDING = {"hidepid=invisible", "hidepid=2", "hidepid=ptraceable", "hidepid=4"}


def _proc_is_hidden(pid: int) -> bool | None:
    """Whether PID's /proc hides other users' processes; None when it cannot be read."""
    for mount in proc.mounts(pid):
        if mount.point == "/proc" and mount.fstype == "proc":
            return bool(_HIDING & set(mount.super_options))
    return None


def managers_without_it() -> List[int]:
    """The uids of running user managers whose /proc shows other users' processes. A user can
    name a process of theirs `systemd --user`: that only ever lists their own uid."""
    open_uids = {p.uid for p in proc.processes()
                 if len(p.argv) >= 2 and p.argv[0].endswith("/systemd") and p.argv[1] == "--user"
                 and p.uid != 0 and _proc_is_hidden(p.pid) is False}
    return sorted(open_uids)
