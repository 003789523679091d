"""systemd's D-Bus view: the policy file that denies GetUnitProcesses and GetProcesses (what
`systemctl status` and `loginctl` use to list a unit's processes with their command lines) to
everyone but root.

One file, packaging/debian/dbus/pam-unshare.conf, shipped by the Debian package in
/usr/share/dbus-1/system.d and by `pam-unshare install` in /etc/dbus-1/system.d on other hosts;
both dbus-daemon and dbus-broker read those directories. The two differ on a file they cannot
parse: dbus-daemon skips it and runs on (measured: it logs "Encountered error ... while parsing"),
leaving the channel open; dbus-broker rejects its whole configuration, ignoring a reload and
failing to start at the next boot. So the file is only ever written whole (atomically, from the
package's bytes), and `status` reports a copy that is not exactly ours.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from pam_unshare import atomic, paths
from pam_unshare.errors import Refused

NAME = "pam-unshare.conf"
PACKAGE_DIR = Path("/usr/share/dbus-1/system.d")
ADMIN_DIR = Path("/etc/dbus-1/system.d")
BUS_SOCKET = Path("/run/dbus/system_bus_socket")
_RELOAD = ["dbus-send", "--system", "--type=method_call", "--print-reply",
           "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
           "org.freedesktop.DBus.ReloadConfig"]


def source() -> Path:
    """The policy shipped inside this package (setup.py copies it from packaging/)."""
    path = Path(paths.__file__).resolve().parent / "lib" / "dbus-policy.conf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the package was not built")
    return path


@dataclass(frozen=True)
class PolicyState:
    path: str | None  # the copy the bus reads, if any
    state: str  # "installed", "missing", "broken", "modified", "no bus"

    @property
    def closed(self) -> bool:
        """Only our own bytes count: a bus skips a rule it cannot read (dbus-daemon logs an
        invalid attribute and goes on), so an edited copy may deny nothing."""
        return self.state in ("installed", "no bus")

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "state": self.state, "closed": self.closed}


def _parses(text: bytes) -> bool:
    try:
        ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return False
    return True


def state(dirs: tuple[Path, ...] = (ADMIN_DIR, PACKAGE_DIR)) -> PolicyState:
    """Which copy of the policy the system bus reads and whether it can: a host without a D-Bus
    configuration directory has no system bus to close."""
    if not any(d.parent.is_dir() for d in dirs):
        return PolicyState(None, "no bus")
    ours = source().read_bytes()
    for directory in dirs:
        path = directory / NAME
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            continue
        if not _parses(text):
            return PolicyState(str(path), "broken")
        return PolicyState(str(path), "installed" if text == ours else "modified")
    return PolicyState(None, "missing")


def reload_bus() -> str | None:
    """Asks a running system bus to read its configuration again; returns a note when it could
    not (the policy then takes effect when the bus next starts or reloads)."""
    if not BUS_SOCKET.exists():
        return None
    try:
        result = subprocess.run(_RELOAD, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the system bus was not asked to reload ({error}): the D-Bus policy takes " \
               f"effect at its next reload"
    if result.returncode != 0:
        return f"the system bus did not reload ({result.stderr.strip() or result.returncode}): " \
               f"the D-Bus policy takes effect at its next reload"
    return None


def _has_bus(directory: Path) -> bool:
    return directory.parent.is_dir() or PACKAGE_DIR.parent.is_dir()


def install(directory: Path = ADMIN_DIR) -> tuple[Path | None, str | None]:
    """Writes the policy into DIRECTORY unless the package's copy is already in force; returns
    the path written (None: nothing to do) and a note. Written through descriptors of
    directories checked to be root's alone, never through a symlink."""
    if not _has_bus(directory):
        return None, None  # no D-Bus on this host: nothing listens to close
    if state((directory, PACKAGE_DIR)).state == "installed":
        return None, None
    try:
        os.makedirs(directory.parent.parent, 0o755, exist_ok=True)
        base = atomic.open_roots_dir(directory.parent, create=True)
        try:
            sub = atomic.open_roots_dir(directory.name, at=base, create=True)
        finally:
            os.close(base)
    except atomic.UnsafeDirectory as error:
        raise Refused(f"{error}; the D-Bus policy was not written") from None
    try:
        atomic.replace_at(sub, NAME, source().read_bytes(), 0o644, 0, 0)
    finally:
        os.close(sub)
    return directory / NAME, reload_bus()


def uninstall(directory: Path = ADMIN_DIR) -> Path | None:
    """Removes our copy from DIRECTORY (never the package's, which apt removes)."""
    try:
        base = atomic.open_roots_dir(directory.parent)
        try:
            sub = atomic.open_roots_dir(directory.name, at=base)
        finally:
            os.close(base)
    except FileNotFoundError:
        return None
    except atomic.UnsafeDirectory as error:
        raise Refused(f"{error}; the D-Bus policy was left in place") from None
    try:
        os.unlink(NAME, dir_fd=sub)
    except FileNotFoundError:
        return None
    finally:
        os.close(sub)
    reload_bus()
    return directory / NAME
