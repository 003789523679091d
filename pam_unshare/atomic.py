"""Replacing a file so that readers and crashes see the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".pam-unshare-tmp"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(target: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Writes DATA to a temporary file beside TARGET, then renames it over TARGET: a reader (or a
    crash) sees the old file or the new one, never a mix; the temporary file never outlives a
    failure."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(target.parent)
