"""Procfs mounts outside /proc that a user could hide under a mount of their own.

The module covers every other procfs with the session's own, reaching it by its path. Where a
user may write a directory on that path, they may mount FUSE over it (fusermount3 needs no more),
and the module, unable to reach the procfs, refuses every namespaced login until that mount is
gone (it must: inside the session the user would unmount it and see the host's processes). Each
such procfs is a way for one user to stop everybody's logins: `check` and `status` warn.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Iterable, List

from pam_unshare import audit, proc

LIVE_PAM_DIR = "/etc/pam.d"


@dataclass(frozen=True)
class Hideable:
    point: str  # where the procfs is mounted
    directory: str  # the directory above it that someone other than root may write
    writer: str  # who: "uid N", "group N", "every user"

    def finding(self) -> audit.Finding:
        return audit.Finding(
            problem=False, where=self.point, kind="procfs",
            message=f"this procfs lies below {self.directory}, which {self.writer} may write: a "
                    f"FUSE mount there hides it, and every namespaced login is refused while it "
                    f"is hidden; mount it where only root writes")


def _writer(info: os.stat_result) -> str | None:
    """Who other than root may write a directory, as fusermount3 judges a mount point: its
    owner, or anyone with write permission where the sticky bit does not restrict it."""
    if info.st_uid != 0:
        return f"uid {info.st_uid}"
    sticky = bool(info.st_mode & stat.S_ISVTX)
    if info.st_mode & stat.S_IWOTH and not sticky:
        return "every user"
    if info.st_mode & stat.S_IWGRP and info.st_gid != 0 and not sticky:
        return f"group {info.st_gid}"
    return None


def hideable(mounts: Iterable[proc.Mount],
             stat_of: Callable[[str], os.stat_result] = os.stat) -> List[Hideable]:
    found = []
    for mount in mounts:
        point = PurePosixPath(mount.point)
        if mount.fstype != "proc" or point == PurePosixPath("/proc") or \
                PurePosixPath("/proc") in point.parents:
            continue
        for directory in point.parents:
            if directory == PurePosixPath("/"):
                break
            try:
                writer = _writer(stat_of(str(directory)))
            except OSError:
                continue
            if writer:
                found.append(Hideable(str(point), str(directory), writer))
                break
    return found


def findings(pam_dir: os.PathLike | str) -> List[audit.Finding]:
    """For the host this runs on (its own /etc/pam.d), never for a copy or an image tree."""
    if os.path.realpath(pam_dir) != LIVE_PAM_DIR:
        return []
    return [entry.finding() for entry in hideable(proc.mounts())]
