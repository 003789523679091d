"""A private mount namespace with throwaway copies of the PAM and account files.

Inside it, /etc/pam.d, /etc/passwd, /etc/group, /etc/shadow and /etc/gshadow are bind mounts of
copies in a work directory: enabling the module or adding users there never writes a host file,
and everything vanishes with the namespace. The demo and the test suite both use it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from pam_unshare import linux, pamd

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


class Sandbox:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pam_dir = workdir / "pam.d"
        self.homes = workdir / "home"
        self._host_namespace: int | None = None

    def enter(self) -> None:
        """Moves this process into a new private mount namespace with the copies in place."""
        if os.geteuid() != 0:
            raise PermissionError("the sandbox needs root (mount namespaces, bind mounts)")
        self.homes.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        shutil.copytree("/etc/pam.d", self.pam_dir, symlinks=True)
        for name in ACCOUNT_FILES:
            if os.path.exists(f"/etc/{name}"):
                shutil.copy2(f"/etc/{name}", self.workdir / name)
        self._host_namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        linux.unshare(linux.CLONE_NEWNS)
        # Private before anything is mounted, so no bind below reaches the host.
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        linux.bind(str(self.pam_dir), "/etc/pam.d")
        for name in ACCOUNT_FILES:
            if (self.workdir / name).exists():
                linux.bind(str(self.workdir / name), f"/etc/{name}")

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


def free_id(start: int = 60000) -> int:
    """The first uid at or above START that is neither a user nor a group id."""
    used = set()
    for name in ("passwd", "group"):
        with open(f"/etc/{name}", encoding="utf-8") as handle:
            used.update(int(line.split(":")[2]) for line in handle if line.count(":") >= 3)
    candidate = start
    while candidate in used:
        candidate += 1
    return candidate
