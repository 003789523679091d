"""This host: what a module file is (where PAM loads it from: paths), and whether the kernel can
give sessions their own PID and mount namespaces. Read-only (the probe's namespaces die with it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from pam_unshare import elf, forked, linux, trust

# What PAM looks up in a session module.
MODULE_FUNCTIONS = ("pam_sm_open_session", "pam_sm_close_session")
MIN_KERNEL = (5, 8)  # setns() with a pidfd


def selinux_enabled() -> bool:
    """Whether SELinux is on here (selinuxfs mounted), the test libselinux's is_selinux_enabled
    starts with: without it pam_selinux does nothing, /proc/self or not."""
    return os.path.exists("/sys/fs/selinux/enforce")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModuleProblem:
    text: str
    unsafe: bool  # PAM would load it, but someone other than root decides what it runs

    def __str__(self) -> str:
        return self.text


def module_problem(path: Path) -> ModuleProblem | None:
    """Why PAM could not, or root should not, load PATH as our module, or None.

    A module that is missing or is not a session module makes every session of a `session
    required` stack fail. One that someone other than root could replace (its file or any
    directory on the way to it) runs their code as root at every login. The file is judged by
    its ELF headers and symbol table and never loaded here: loading runs its constructors."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ModuleProblem(f"{path} does not exist", unsafe=False)
    except OSError as error:
        return ModuleProblem(f"{path}: {error.strerror}", unsafe=False)
    if not stat.S_ISREG(info.st_mode):
        return ModuleProblem(f"{path} is not a regular file", unsafe=False)
    unsafe = trust.problem(str(path))
    if unsafe:
        return ModuleProblem(unsafe, unsafe=True)
    try:
        with open(path, "rb") as handle:
            data = handle.read(elf.MAX_SIZE + 1)
    except OSError as error:
        return ModuleProblem(f"{path}: {error.strerror}", unsafe=False)
    if len(data) > elf.MAX_SIZE:
        return ModuleProblem(f"{path} is larger than {elf.MAX_SIZE >> 20} MiB, which no PAM "
                             f"module is", unsafe=False)
    why = elf.module_problem(data, MODULE_FUNCTIONS)
    return ModuleProblem(f"{path} {why}", unsafe=False) if why else None


@dataclass(frozen=True)
class KernelSupport:
    release: str
    release_ok: bool
    max_pid_namespaces: int | None
    root_propagation: str
    unshare: str  # "works", "fails: REASON" or "not tried: REASON"

    def problems(self) -> List[str]:
        """Why sessions could not get their own PID and mount namespaces here."""
        found = []
        if not self.release_ok:
            found.append(f"kernel {self.release} is older than "
                         f"{'.'.join(map(str, MIN_KERNEL))}")
        if self.max_pid_namespaces is None:
            found.append("/proc/sys/user/max_pid_namespaces cannot be read")
        elif not self.max_pid_namespaces:
            found.append("user.max_pid_namespaces is 0")
        if self.unshare.startswith("fails"):
            found.append(f"creating them {self.unshare}")
        return found

    @property
    def ok(self) -> bool:
        return (self.release_ok and bool(self.max_pid_namespaces)
                and not self.unshare.startswith("fails"))

    def as_dict(self) -> Dict[str, object]:
        return {"release": self.release, "release_ok": self.release_ok,
                "max_pid_namespaces": self.max_pid_namespaces,
                "root_propagation": self.root_propagation, "unshare": self.unshare,
                "ok": self.ok}


def _release_ok(release: str) -> bool:
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers) >= MIN_KERNEL


def _max_pid_namespaces() -> int | None:
    try:
        return int(Path("/proc/sys/user/max_pid_namespaces").read_text().strip())
    except (OSError, ValueError):
        return None


def root_propagation() -> str:
    """shared, slave, private or unbindable: the propagation of / in this mount namespace."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return "unknown"
    found = "unknown"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[4] == "/":
            optional = fields[6:fields.index("-")] if "-" in fields else []
            if any(tag.startswith("shared:") for tag in optional):
                found = "shared"
            elif any(tag.startswith("master:") for tag in optional):
                found = "slave"
            elif "unbindable" in optional:
                found = "unbindable"
            else:
                found = "private"
    return found


def _probe_child(report: int) -> int:
    """In a forked child: what the module does at login, minus the login. Returns the exit
    status; writes the reason of a failure to REPORT."""
    try:
        linux.unshare(linux.CLONE_NEWPID | linux.CLONE_NEWNS)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_SLAVE)
        pid = os.fork()
        if pid == 0:
            try:
                if os.getpid() != 1:
                    os._exit(3)
                linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV |
                            linux.MS_NOEXEC)
                os._exit(0)
            except BaseException:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code:
            os.write(report, {3: b"the first child is not PID 1",
                              4: b"mounting /proc in the new namespace failed"}.get(
                                  code, b"the namespace's first process failed"))
        return code
    except OSError as error:
        os.write(report, (error.strerror or str(error)).encode())
        return 2


def probe_unshare() -> str:
    """Creates, in a throwaway child, the PID and mount namespaces a session gets."""
    if os.geteuid() != 0:
        return "not tried: needs root"
    reason, code = forked.run(_probe_child)
    if code == 0:
        return "works"
    return f"fails: {reason.decode(errors='replace') or 'unknown reason'}"


def kernel_support() -> KernelSupport:
    release = os.uname().release
    return KernelSupport(release=release, release_ok=_release_ok(release),
                         max_pid_namespaces=_max_pid_namespaces(),
                         root_propagation=root_propagation(), unshare=probe_unshare())
