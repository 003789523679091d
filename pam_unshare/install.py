"""Putting the built module where PAM loads modules from, and taking it away."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

from pam_unshare import __version__, pamd, paths, system
from pam_unshare.atomic import replace_atomically
from pam_unshare.errors import Failed, NeedsRoot, Refused
from pam_unshare.stacks import PamTree

MODE = 0o644


@dataclass(frozen=True)
class Installed:
    path: Path
    sha256: str
    version: str
    changed: bool  # False: an identical copy was already there


def _destination(dest: Path | None, command: str) -> Path:
    if dest is None:
        if os.geteuid() != 0:
            raise NeedsRoot(f"{command} must run as root: the module goes into the system's "
                            f"PAM module directory, owned by root (or pass --dest DIR)")
        directory = paths.module_dir()
        if directory is None:
            raise Failed(f"no PAM module directory found (no {paths.REFERENCE_MODULE} in "
                         f"{', '.join(paths.module_dir_candidates()[:6])}); pass --dest DIR")
        return directory
    if not dest.is_dir():
        raise Refused(f"{dest}: no such directory")
    return dest


def _is_current(target: Path, digest: str) -> bool:
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return False
    owner_ok = os.geteuid() != 0 or (info.st_uid, info.st_gid) == (0, 0)
    return (info.st_mode & 0o7777) == MODE and owner_ok and system.sha256(target) == digest


def install(dest: Path | None = None) -> Installed:
    """Copies the built module into DEST (default: the system's PAM module directory) under a
    temporary name, then renames it: PAM never loads a half-written module. Mode 0644, owned by
    root when run as root."""
    directory = _destination(dest, "pam-unshare install")
    source = paths.module_path()
    digest = system.sha256(source)
    target = directory / paths.MODULE_NAME
    if _is_current(target, digest):
        return Installed(target, digest, __version__, changed=False)
    # Root-owned when run as root: a module others could write would run in every login.
    owner = (0, 0) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    replace_atomically(target, source.read_bytes(), MODE, *owner)
    return Installed(target, digest, __version__, changed=True)


def _is_own_module(target: Path) -> bool:
    """Whether TARGET is the module module-path names (the Debian package's): removing it
    would leave dpkg's file list, and this CLI, pointing at nothing."""
    try:
        return os.path.samefile(target, paths.module_path())
    except (FileNotFoundError, NotADirectoryError):
        return False


def users(pam_dir: Path, target: Path, in_system_dir: bool) -> List[str]:
    """"FILE:LINE" of every PAM line that loads TARGET (by name when it is in the system's module
    directory, or by its absolute path)."""
    tree = PamTree(pam_dir)
    found = []
    for name in tree.services():
        try:
            rules = tree.parsed(name).rules
        except (FileNotFoundError, pamd.ParseError):  # cannot parse: look at its raw text
            text = tree.text(name) or ""
            if paths.MODULE_NAME in "".join(line.split("#", 1)[0] for line in
                                            text.splitlines()):
                found.append(f"{name} (does not parse; mentions {paths.MODULE_NAME})")
            continue
        for rule in rules:
            if not rule.is_ours:
                continue
            if (rule.module.startswith("/")
                    and os.path.realpath(rule.module) == os.path.realpath(target)) or (
                    in_system_dir and not rule.module.startswith("/")):
                found.append(f"{name}:{rule.number}")
    return found


def uninstall(pam_dir: Path, dest: Path | None = None) -> Path | None:
    """Removes the installed module; refuses while a PAM file still loads it (every session of
    that service would fail). Returns the removed path, or None when there was none."""
    directory = _destination(dest, "pam-unshare uninstall")
    target = directory / paths.MODULE_NAME
    if _is_own_module(target):
        raise Refused(f"{target} is the module this pam-unshare manages, installed by the "
                      f"libpam-unshare package: remove that package instead (its prerm takes "
                      f"every line naming the module out of /etc/pam.d first)")
    in_system_dir = dest is None or (paths.module_dir() is not None and
                                     os.path.samefile(directory, paths.module_dir()))
    still = users(pam_dir, target, in_system_dir)
    if still:
        services = sorted({entry.split(":")[0].split(" ")[0] for entry in still})
        raise Refused(f"{target} is still used by {', '.join(still)}: every session there would "
                      f"fail without it; run `pam-unshare disable {' '.join(services)}` first")
    try:
        os.unlink(target)
    except FileNotFoundError:
        return None
    return target
