"""A private mount namespace with throwaway copies of the PAM and account files.

Inside it, /etc/pam.d, /etc/passwd, /etc/group, /etc/shadow and /etc/gshadow are bind mounts of
copies in a work directory: enabling the module or adding users there never writes a host file,
and everything vanishes with the namespace. The demo and the test suite both use it.

The account copies hold password hashes: they live in WORKDIR/accounts, a directory that is 0700
from its creation, and each is created 0600 (O_EXCL, umask 077) before a byte is written, then
given the original's owner and mode. No other user can open them at any moment: WORKDIR itself
is 0755 only so that the throwaway users reach their homes.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pam_unshare import linux, pamd

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")
# Ids that Debian (60000-64999, and so systemd-homed's 60001-60513) and systemd (dynamic users up
# to 65519, nobody 65534, 65535) hand out: throwaway accounts take none of them.
RESERVED_IDS = range(60000, 65536)
# From 65536 up systemd documents no user (its containers start at 524288).
FIRST_FREE_ID = 65536


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def copy_private(source: str, target: Path) -> None:
    """Copies SOURCE to TARGET, a new file that is 0600 from its creation (O_EXCL: never an
    existing file or a symlink), then gives it SOURCE's owner and mode."""
    with open(source, "rb") as src:
        info = os.fstat(src.fileno())
        with _umask(0o077):
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
            os.fchown(dst.fileno(), info.st_uid, info.st_gid)
            os.fchmod(dst.fileno(), stat.S_IMODE(info.st_mode))


class Sandbox:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pam_dir = workdir / "pam.d"
        self.homes = workdir / "home"
        self.accounts = workdir / "accounts"  # 0700: the copies of shadow and gshadow
        self._host_namespace: int | None = None

    def enter(self) -> None:
        """Moves this process into a new private mount namespace with the copies in place."""
        if os.geteuid() != 0:
            raise PermissionError("the sandbox needs root (mount namespaces, bind mounts)")
        self.homes.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        shutil.copytree("/etc/pam.d", self.pam_dir, symlinks=True)
        with _umask(0o077):
            self.accounts.mkdir(mode=0o700)
        for name in ACCOUNT_FILES:
            if os.path.exists(f"/etc/{name}"):
                copy_private(f"/etc/{name}", self.accounts / name)
        self._host_namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        linux.unshare(linux.CLONE_NEWNS)
        # Private before anything is mounted, so no bind below reaches the host.
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.bind(str(self.pam_dir), "/etc/pam.d")
        for name in ACCOUNT_FILES:
            if (self.accounts / name).exists():
                linux.bind(str(self.accounts / name), f"/etc/{name}")

    def leave(self) -> None:
        """Returns this process to the mount namespace it came from."""
        if self._host_namespace is not None:
            linux.setns(self._host_namespace, linux.CLONE_NEWNS)
            os.close(self._host_namespace)
            self._host_namespace = None
            os.chdir("/")

    def _append(self, name: str, line: str) -> None:
        with open(f"/etc/{name}", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def add_group(self, name: str, gid: int, members: Iterable[str] = ()) -> None:
        self._append("group", f"{name}:x:{gid}:{','.join(members)}")
        self._append("gshadow", f"{name}:!::{','.join(members)}")

    def add_user(self, name: str, uid: int, shell: str = "/bin/bash") -> Path:
        """Adds NAME with its own group (gid = uid) and a home directory; no password works."""
        home = self.homes / name
        home.mkdir(mode=0o755, exist_ok=True)
        os.chown(home, uid, uid)
        self.add_group(name, uid)
        self._append("passwd", f"{name}:x:{uid}:{uid}:pam-unshare test user:{home}:{shell}")
        # "*": no password can match, yet the account is not locked (sshd refuses locked ones).
        self._append("shadow", f"{name}:*:19000:0:99999:7:::")
        return home

    def write_service(self, service: str, text: str) -> None:
        pamd.write(self.pam_dir / service, text, backup=False)

    def enable(self, services: Sequence[str], module: str, options: Sequence[str] = ()) -> None:
        """Puts our session line, with OPTIONS, into each service's copy."""
        line = pamd.session_line(module, options)
        for service in services:
            path = self.pam_dir / service
            pamd.write(path, pamd.with_session_line(pamd.read(path), line), backup=False)


def free_id(start: int = FIRST_FREE_ID) -> int:
    """The first id at or above START, outside RESERVED_IDS, that NSS knows neither as a user
    nor as a group (getpwuid, getgrgid: every source nsswitch.conf names, not only /etc)."""
    candidate = start
    while True:
        if candidate in RESERVED_IDS:
            candidate = RESERVED_IDS.stop
            continue
        try:
            pwd.getpwuid(candidate)
        except KeyError:
            try:
                grp.getgrgid(candidate)
            except KeyError:
                return candidate
        candidate += 1
