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
from typing import List

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


def unit_dir_for(pam_dir: Path) -> Path | None:
    """Where the drop-in goes for the PAM directory being configured: /etc/systemd/system for
    /etc/pam.d, ROOT/etc/systemd/system for ROOT/etc/pam.d (an image's tree); None for any other
    directory, so that a command run on a copy of a PAM directory never writes the host's units."""
    if pam_dir.parts[-2:] != ("etc", "pam.d"):
        return None
    return pam_dir.parent / DEFAULT_UNIT_DIR.relative_to("/etc")


def dropin_path(unit_dir: Path = DEFAULT_UNIT_DIR) -> Path:
    return unit_dir / DROPIN_DIR / DROPIN_NAME


def _open(path: str | Path, at: int | None = None, create: bool = False) -> int | None:
    """A directory of root's alone, or None when it does not exist (and CREATE is false)."""
    try:
        return atomic.open_roots_dir(path, at, create)
    except FileNotFoundError:
        return None
    except atomic.UnsafeDirectory as error:
        raise Refused(f"{error}; nothing written") from None


def _read_at(directory: int, name: str) -> str | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Refused(f"{DROPIN_DIR}/{name}: cannot read it ({error.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise Refused(f"{DROPIN_DIR}/{name}: not a regular file")
        return handle.read().decode(errors="replace")


def read(unit_dir: Path = DEFAULT_UNIT_DIR) -> str | None:
    """The drop-in's text, or None when there is none. Refused when something in its place is
    not what enable writes (a symlink, a directory others can write to)."""
    base = _open(unit_dir)
    if base is None:
        return None
    try:
        sub = _open(DROPIN_DIR, at=base)
        if sub is None:
            return None
        try:
            return _read_at(sub, DROPIN_NAME)
        finally:
            os.close(sub)
    finally:
        os.close(base)


def is_installed(unit_dir: Path = DEFAULT_UNIT_DIR) -> bool:
    return read(unit_dir) == DROPIN_TEXT


def check_writable(unit_dir: Path = DEFAULT_UNIT_DIR) -> str | None:
    """Refuses, before anything is written anywhere, what enable would refuse later: a missing
    or unsafe unit directory, an unsafe drop-in directory or file. Returns the drop-in's text."""
    if not unit_dir.is_dir():
        raise Refused(f"{unit_dir}: no such directory (is systemd installed?); nothing written")
    return read(unit_dir)


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
    change = DropIn(dropin_path(unit_dir), check_writable(unit_dir), DROPIN_TEXT)
    if dry_run or not change.changed:
        return change, None
    base = _open(unit_dir)
    assert base is not None
    try:
        sub = _open(DROPIN_DIR, at=base, create=True)
        assert sub is not None
        try:
            atomic.replace_at(sub, DROPIN_NAME, DROPIN_TEXT.encode(), 0o644, 0, 0)
        finally:
            os.close(sub)
    finally:
        os.close(base)
    return change, _reload(unit_dir)


def disable(unit_dir: Path = DEFAULT_UNIT_DIR, dry_run: bool = False) -> DropIn:
    change = DropIn(dropin_path(unit_dir), read(unit_dir), None)
    if dry_run or change.before is None:
        return change
    base = _open(unit_dir)
    assert base is not None
    try:
        sub = _open(DROPIN_DIR, at=base)
        assert sub is not None
        try:
            os.unlink(DROPIN_NAME, dir_fd=sub)
            os.fsync(sub)
        finally:
            os.close(sub)
        with contextlib.suppress(OSError):  # kept when it holds other drop-ins
            os.rmdir(DROPIN_DIR, dir_fd=base)
    finally:
        os.close(base)
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
    name a process of theirs `systemd --user` (even run the real one): that only ever lists
    their own uid, as one to restart."""
    ours = os.stat("/proc/self/ns/pid").st_ino  # not a container's managers
    open_uids = {p.uid for p in proc.processes()
                 if p.namespace == ours
                 and len(p.argv) >= 2 and p.argv[1] == "--user" and p.uid != 0
                 and proc.executable(p.pid).endswith("/systemd")
                 and _proc_is_hidden(p.pid) is False}
    return sorted(open_uids)
