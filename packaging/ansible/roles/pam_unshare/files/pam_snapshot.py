#!/usr/bin/python3
"""Saves directory trees before the pam_unshare role changes them, and puts them back exactly.

  pam_snapshot.py save ARCHIVE DIR...      a tar of each DIR: contents, modes, numeric owners,
                                           mtimes, symbolic links
  pam_snapshot.py restore ARCHIVE DIR...   make each DIR what ARCHIVE holds: files that differ
                                           are replaced one by one (a temporary file in the same
                                           directory, then a rename), files added since are
                                           removed; nothing else is touched
  pam_snapshot.py rollback ARCHIVE --purge | --previous DEB VERSION | --keep | --keep-module
                  PATH...                  the role's rollback (its rescue and its on-host safety
                                           net run this same command), in the order that keeps
                                           every PAM stack's modules on disk: --purge (nothing was
                                           installed before) restores PATHs first and then purges
                                           pam-unshare and libpam-unshare; --previous (VERSION was
                                           installed before) first reinstalls DEB unless VERSION
                                           is what is installed, then restores; --keep only
                                           restores; --keep-module restores, then purges the
                                           command line (pam-unshare) this run added
  The command line's package depends on libpam-unshare of its own version: --previous puts back
  previous-cli.deb next to DEB with it when that file is there (the version that was installed),
  and otherwise purges pam-unshare first (it was not installed).

The role passes the PAM files it and pam-auth-update write, one by one, never a whole
directory: a restore must not delete or rewrite what a concurrent apt run put into /etc/pam.d.

Prints one JSON object: {"changed": bool, "paths": [paths written or removed]} (rollback adds
"package": what it did to libpam-unshare and pam-unshare); a failure is one line on stderr
and exit status 1.
Plain Python 3.8 with the standard library only: it runs with the interpreter Ansible uses.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from typing import Any, Dict, List

PACKAGE = "libpam-unshare"
CLI_PACKAGE = "pam-unshare"


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


class RollbackError(Exception):
    pass


def installed_version(package: str = PACKAGE) -> str:
    """The installed version of PACKAGE, '' when it is not fully installed."""
    res = subprocess.run(["dpkg-query", "--show", "--showformat=${db:Status-Abbrev}${Version}",
                          package], capture_output=True, text=True)
    return res.stdout[3:] if res.returncode == 0 and res.stdout.startswith("ii ") else ""


def _known(package: str) -> bool:
    """dpkg-query knows a package while any trace of it is left (config files, half-installed)."""
    return subprocess.run(["dpkg-query", "--show", package], capture_output=True).returncode == 0


def _purge(packages: List[str]) -> List[str]:
    """Purges those of PACKAGES dpkg knows, one by one in this order; what was done."""
    done = []
    for package in packages:
        if _known(package):
            _dpkg(["dpkg", "--purge", package])
            done.append("dpkg --purge " + package)
    return done


def _dpkg(argv: List[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    res = subprocess.run(argv, capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise RollbackError(f"{' '.join(argv)} failed (status {res.returncode}): "
                            f"{lines[-1] if lines else ''}")


def rollback(archive: str, how: List[str], roots: List[str]) -> Dict[str, Any]:
    package = "unchanged"
    if how[0] == "--purge":
        paths = restore(archive, roots)
        # The command line first: it depends on the module's package.
        package = "; ".join(_purge([CLI_PACKAGE, PACKAGE])) or package
    elif how[0] == "--previous":
        deb, version = how[1], how[2]
        cli_deb = os.path.join(os.path.dirname(deb), "previous-cli.deb")
        with_cli = os.path.exists(cli_deb)
        if installed_version() != version or (
                with_cli and installed_version(CLI_PACKAGE) != version):
            # Its Depends names the version going away: without its own previous .deb (it was
            # not installed before), it goes first.
            done = [] if with_cli else _purge([CLI_PACKAGE])
            _dpkg(["dpkg", "--install", deb] + ([cli_deb] if with_cli else []))
            package = "; ".join(done + [f"{PACKAGE} {version} reinstalled from {deb}"
                                        + (f" with {CLI_PACKAGE}" if with_cli else "")])
        paths = restore(archive, roots)
    elif how[0] == "--keep-module":
        paths = restore(archive, roots)
        package = "; ".join(_purge([CLI_PACKAGE])) or package
    else:
        paths = restore(archive, roots)
    return {"changed": bool(paths) or package != "unchanged", "paths": paths,
            "package": package}


def main(argv: List[str]) -> int:
    if len(argv) >= 3 and argv[0] == "rollback":
        archive, rest = argv[1], argv[2:]
        width = {"--purge": 1, "--keep": 1, "--keep-module": 1, "--previous": 3}.get(rest[0], 0)
        if width and len(rest) > width:
            try:
                result = rollback(archive, rest[:width], [os.path.abspath(r)
                                                          for r in rest[width:]])
            except (RollbackError, OSError) as error:
                print(f"pam_snapshot.py rollback: {error}", file=sys.stderr)
                return 1
            print(json.dumps(result))
            return 0
    if len(argv) < 3 or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    command, archive, roots = argv[0], argv[1], [os.path.abspath(r) for r in argv[2:]]
    paths = save(archive, roots) if command == "save" else restore(archive, roots)
    print(json.dumps({"changed": bool(paths), "paths": paths}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
