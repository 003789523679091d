"""Whether a path is under root's control: who could change what it names.

PAM loads modules as root in every login, and root's tools read and rewrite PAM files. A file is
only as safe as every directory on the way to it: whoever can write one of them can put another
file (or a symlink) in its place. So a path is trusted when the file and every directory the
kernel passes through to reach it, symlinks followed, are owned by root (or by the user running
the command, who is root when it matters) and writable by nobody else; so must every symlink on
the way. A directory writable by
others is accepted only with the sticky bit and a root owner (/tmp): there, no one else can
rename or remove what root owns.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import List

MAX_SYMLINKS = 40  # the kernel's limit when it resolves a path


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"group {gid}"


def _owner_problem(path: str, info: os.stat_result) -> str | None:
    trusted = {0, os.geteuid()}
    if info.st_uid not in trusted:
        return f"{path} is owned by {_user(info.st_uid)}, not root"
    mode = info.st_mode
    if not mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX and info.st_uid == 0:
        return None  # like /tmp: others cannot rename or remove what root owns in it
    who = "everyone" if mode & stat.S_IWOTH else _group(info.st_gid)
    return f"{path} is writable by {who}"


def problem(path: str, directory: bool = False) -> str | None:
    """Why someone other than root (or the caller) could change what PATH names, or None.

    Walks PATH one component at a time as the kernel does, following symlinks, and checks every
    directory it passes through (a symlink's own directory included) and the final file (a
    directory when DIRECTORY). Also says when PATH does not exist or is of the wrong kind."""
    pending: List[str] = list(reversed(os.path.abspath(path).split("/")))
    current = "/"
    found = _owner_problem("/", os.stat("/"))
    if found:
        return found
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return f"{path} does not exist" + ("" if candidate == path else
                                                f" ({candidate} is missing)")
        except OSError as error:
            return f"{candidate}: {error.strerror}"
        if stat.S_ISLNK(info.st_mode):
            # Its mode means nothing, but its owner may remove and recreate it in a sticky
            # directory such as /tmp.
            if info.st_uid not in {0, os.geteuid()}:
                return f"{candidate} is owned by {_user(info.st_uid)}, not root"
            links += 1
            if links > MAX_SYMLINKS:
                return f"{path}: too many levels of symbolic links"
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = "/"
            pending.extend(reversed(target.split("/")))
            continue
        last = not any(part not in ("", ".") for part in pending)
        if not last and not stat.S_ISDIR(info.st_mode):
            return f"{path}: {candidate} is not a directory"
        if last and directory and not stat.S_ISDIR(info.st_mode):
            return f"{path} is not a directory"
        if last and not directory and not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file"
        found = _owner_problem(candidate, info)
        if found:
            return found
        current = candidate
    return None
