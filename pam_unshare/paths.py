"""Where the module is: the one built with this package, the directory PAM loads modules from,
and the copy PAM loads by name (`install` puts it there)."""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import List

MODULE_NAME = "pam_unshare.so"
# The module every PAM installation has; the directory that holds it is where PAM resolves a
# module given by name only.
REFERENCE_MODULE = "pam_unix.so"
_TRIPLETS = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu",
             "armv7l": "arm-linux-gnueabihf", "i686": "i386-linux-gnu",
             "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu",
             "riscv64": "riscv64-linux-gnu"}


def module_path() -> Path:
    """The pam_unshare.so built with this package.

    A wheel or a checkout carries its own copy; the Debian package pam-unshare has a link to
    the one libpam-unshare installed, so this names the file PAM loads."""
    path = (Path(__file__).resolve().parent / "lib" / MODULE_NAME).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the package was not built (install it with pip install .)"
        )
    return path


def _multiarch() -> str:
    return sysconfig.get_config_var("MULTIARCH") or _TRIPLETS.get(platform.machine(), "")


def module_dir_candidates() -> List[str]:
    triplet = _multiarch()
    candidates = [f"/usr/lib/{triplet}/security", f"/lib/{triplet}/security"] if triplet else []
    candidates += ["/usr/lib64/security", "/lib64/security", "/usr/lib/security", "/lib/security"]
    candidates += sorted(glob.glob("/usr/lib/*/security")) + sorted(glob.glob("/lib/*/security"))
    return list(dict.fromkeys(candidates))


def _from_dpkg() -> str | None:
    if shutil.which("dpkg") is None:
        return None
    result = subprocess.run(["dpkg", "-L", "libpam-modules"], capture_output=True, text=True,
                            check=False)
    for line in result.stdout.splitlines():
        if line.endswith("/" + REFERENCE_MODULE) and os.path.isfile(line):
            return os.path.dirname(line)
    return None


def module_dir() -> Path | None:
    """The directory PAM loads modules from: where pam_unix.so lives. None if not found."""
    for candidate in module_dir_candidates():
        if os.path.isfile(os.path.join(candidate, REFERENCE_MODULE)):
            return Path(candidate)
    found = _from_dpkg()
    return Path(found) if found else None


def resolve_module(module: str) -> Path | None:
    """The file PAM loads for a module path as written in a PAM file."""
    if module.startswith("/"):
        return Path(module)
    directory = module_dir()
    return directory / module if directory is not None else None
