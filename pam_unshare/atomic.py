"""Replacing a file so that readers and crashes see the old content or the new, never a mix.

Everything happens relative to an open directory: the temporary file is created there with
O_EXCL and O_NOFOLLOW, and the rename replaces the directory entry itself (a symlink put in its
place is replaced, never followed), so no path is resolved twice.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Tuple

TEMP_SUFFIX = ".pam-unshare-tmp"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _create_temporary(directory: int, name: str) -> Tuple[int, str]:
    while True:
        temp = f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            return os.open(temp, _CREATE, 0o600, dir_fd=directory), temp
        except FileExistsError:
            continue


def replace_at(directory: int, name: str, data: bytes, mode: int, uid: int, gid: int,
               before_rename: Callable[[], None] | None = None) -> os.stat_result:
    """Writes DATA to a temporary file in the open DIRECTORY, then renames it over NAME: a
    reader (or a crash) sees the old file or the new one, never a mix; the temporary file never
    outlives a failure. BEFORE_RENAME runs right before the rename and may raise to stop it.
    Returns the new file's stat."""
    fd, temp = _create_temporary(directory, name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
            written = os.fstat(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=directory)
        raise
    os.fsync(directory)
    return written


def replace_atomically(target: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """replace_at for TARGET's directory and name."""
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_at(directory, target.name, data, mode, uid, gid)
    finally:
        os.close(directory)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_roots_dir(path: Path | str, at: int | None = None, create: bool = False) -> int:
    """PATH (relative to the open directory AT when given) opened without following a symlink,
    after checking on the descriptor itself that only root can write to it; with CREATE, made
    0755 first if missing. Raises FileNotFoundError when it is missing, UnsafeDirectory when it
    is not root's alone or not a directory."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755, dir_fd=at)
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=at)
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP: a symlink; ENOTDIR
        raise UnsafeDirectory(f"{path}: not a directory ({error.strerror})") from None
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & 0o022:
        os.close(fd)
        raise UnsafeDirectory(f"{path}: not a directory only root can write to (owner uid "
                              f"{info.st_uid}, mode {info.st_mode & 0o7777:o})")
    return fd


class UnsafeDirectory(Exception):
    pass
