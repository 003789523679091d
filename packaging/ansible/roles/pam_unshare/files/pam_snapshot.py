#!/usr/bin/python3
"""Saves directory trees before the pam_unshare role changes them, and puts them back exactly.

  pam_snapshot.py save ARCHIVE DIR...      a tar of each DIR: contents, modes, numeric owners,
                                           mtimes, symbolic links
  pam_snapshot.py restore ARCHIVE DIR...   make each DIR what ARCHIVE holds: files that differ
                                           are replaced one by one (a temporary file in the same
                                           directory, then a rename), files added since are
                                           removed; nothing else is touched

Prints one JSON object: {"changed": bool, "paths": [paths written or removed]}.
Plain Python 3.8 with the standard library only: it runs with the interpreter Ansible uses.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tarfile
from typing import Dict, List


def _name(path: str) -> str:
    return path.lstrip("/")


def save(archive: str, roots: List[str]) -> List[str]:
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                  format=tarfile.PAX_FORMAT) as tar:
        for root in roots:
            if os.path.lexists(root):
                tar.add(root, arcname=_name(root), recursive=True)
    return []


def _same_file(path: str, member: tarfile.TarInfo, data: bytes) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) != (
            member.mode, member.uid, member.gid):
        return False
    with open(path, "rb") as f:
        return f.read() == data


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _restore_member(path: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> bool:
    """Puts one saved entry back; True if anything had to change."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.pu-restore")
    if member.isdir():
        if os.path.isdir(path) and not os.path.islink(path):
            st = os.lstat(path)
            if (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (member.mode, member.uid,
                                                                     member.gid):
                return False
        elif os.path.lexists(path):
            _remove(path)
            os.mkdir(path, 0o700)
        else:
            os.mkdir(path, 0o700)
        os.chown(path, member.uid, member.gid)
        os.chmod(path, member.mode)
        return True
    if member.issym():
        if os.path.islink(path) and os.readlink(path) == member.linkname:
            return False
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(member.linkname, tmp)
        os.lchown(tmp, member.uid, member.gid)
        os.replace(tmp, path)
        return True
    extracted = tar.extractfile(member)
    data = extracted.read() if extracted else b""
    if _same_file(path, member, data):
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chown(tmp, member.uid, member.gid)
    os.chmod(tmp, member.mode)
    os.utime(tmp, (member.mtime, member.mtime))
    os.replace(tmp, path)
    return True


def restore(archive: str, roots: List[str]) -> List[str]:
    changed: List[str] = []
    with tarfile.open(archive, "r") as tar:
        members: Dict[str, tarfile.TarInfo] = {"/" + m.name: m for m in tar.getmembers()}
        for root in roots:
            saved = sorted(path for path in members if path == root
                           or path.startswith(root.rstrip("/") + "/"))
            # Added since the save: removed, deepest first.
            if os.path.isdir(root) and root in members:
                for dirpath, dirnames, filenames in os.walk(root, topdown=False):
                    for name in filenames + dirnames:
                        path = os.path.join(dirpath, name)
                        if path not in members and os.path.lexists(path):
                            _remove(path)
                            changed.append(path)
            elif root not in members and os.path.lexists(root):
                _remove(root)
                changed.append(root)
            # Saved: put back, parents first.
            for path in saved:
                if _restore_member(path, members[path], tar):
                    changed.append(path)
    return changed


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    command, archive, roots = argv[0], argv[1], [os.path.abspath(r) for r in argv[2:]]
    paths = save(archive, roots) if command == "save" else restore(archive, roots)
    print(json.dumps({"changed": bool(paths), "paths": paths}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
