"""Building the Debian package (packaging/build-deb) for the tests that install it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent.parent
BUILD_DEB = ROOT / "packaging" / "build-deb"
DEBIAN_DIR = ROOT / "packaging" / "debian"
PACKAGE = "libpam-unshare"


def project_version() -> str:
    """[project] version of pyproject.toml: where the package's version comes from."""
    text = (ROOT / "pyproject.toml").read_text()
    project = re.search(r"^\[project\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    assert project, "pyproject.toml has no [project] table"
    version = re.search(r'^version\s*=\s*"([^"]+)"', project[1], re.M)
    assert version, "pyproject.toml's [project] has no version"
    return version[1]


def debian_version(version: str) -> str:
    """The Debian spelling of a PEP 440 version (build-deb does the same): 1.0rc1 -> 1.0~rc1."""
    return re.sub(r"(a|b|rc)([0-9]+)", r"~\1\2", version).replace(".dev", "~dev")


def build_droppings() -> List[Path]:
    """What an in-tree dpkg-buildpackage would leave behind: build-deb must never do that."""
    found = [p for p in (ROOT / "debian", DEBIAN_DIR / "changelog", DEBIAN_DIR / "files",
                         DEBIAN_DIR / "build", DEBIAN_DIR / PACKAGE, DEBIAN_DIR / ".debhelper",
                         DEBIAN_DIR / "debhelper-build-stamp") if p.exists()]
    for where in (ROOT, ROOT / "packaging", ROOT.parent):
        found += sorted(where.glob(f"{PACKAGE}*.deb")) + sorted(where.glob("pam-unshare_*"))
    return found
