"""The few Linux system calls Python's os module lacks before 3.12, with errors as OSError."""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
# ioctl on a namespace file: a descriptor for the parent PID namespace (linux/nsfs.h).
NS_GET_PARENT = 0xB702
# ioctl on a namespace file: a descriptor for the user namespace that owns it.
NS_GET_USERNS = 0xB701

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    def encode(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(
        _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                    encode(data)),
        f"mount {target}",
    )


def bind(source: str, target: str, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))


PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:
    """The kernel sends SIGNUM to this process when the thread that forked it exits. Cleared by
    a later change of credentials and by exec of a set-user-ID program: set it last."""
    _check(_libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signum), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_PDEATHSIG)")
