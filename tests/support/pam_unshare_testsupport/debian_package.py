"""Building the Debian package (packaging/build-deb) for the tests that install it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, List
from urllib.parse import unquote

if TYPE_CHECKING:
    from hosts.systemd_container import SystemdContainer

# tests/support/pam_unshare_testsupport/ in the source tree (installed editable).
ROOT = Path(__file__).resolve().parents[3]
BUILD_DEB = ROOT / "packaging" / "build-deb"
DEBIAN_DIR = ROOT / "packaging" / "debian"
PACKAGE = "libpam-unshare"
APT_LISTS = Path("/var/lib/apt/lists")


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


def seed_apt(ct: SystemdContainer, work: Path, request: str) -> List[str]:
    """Puts what `apt-get install REQUEST` needs from the archive into the container's apt
    cache, fetched here (into WORK, reused for the next container): the test containers have
    no network, where a real host has its mirror. apt then resolves the dependencies itself,
    from this machine's package lists (the containers' sources are this machine's). Returns the
    packages seeded."""
    lists = [p for p in APT_LISTS.iterdir() if p.is_file() and
             ("_Packages" in p.name or p.name.endswith("Release"))]
    assert lists, "no apt package lists on this machine: run apt-get update"
    for path in lists:
        ct.write_file(f"{APT_LISTS}/{path.name}", path.read_bytes())
    res = ct.run("export DEBIAN_FRONTEND=noninteractive; "
                 f"apt-get install -y --print-uris {request}", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # Lines "'URI' FILE SIZE HASH"; the local .debs of REQUEST have file: URIs.
    wanted = re.findall(r"^'https?://[^']+' (([^_\s]+)_([^_\s]+)_[^_\s]+\.deb) \d+ ",
                        res.stdout, re.M)
    work.mkdir(parents=True, exist_ok=True)
    for filename, name, version in wanted:
        if not (work / filename).exists():
            subprocess.run(["apt-get", "download", "-q", f"{name}={unquote(version)}"],
                           cwd=work, check=True, capture_output=True, timeout=300)
            (fetched,) = work.glob(f"{name}_*.deb")
            fetched.rename(work / filename)
        ct.write_file(f"/var/cache/apt/archives/{filename}", (work / filename).read_bytes())
    return [name for _, name, _ in wanted]
