"""The sdist and the wheel (`python -m build`), as someone installs them from a file or an index.

Built once for this module, with build isolation (the sdist's own build requirements), from a
copy of the files an sdist takes, so nothing is written into the tree: `python -m build` makes
the sdist, then the wheel from the unpacked sdist, which compiles the cffi binding and the PAM
module with the C compiler and libpam's headers. The wheel is installed into a fresh venv;
its pam-unshare reports pyproject.toml's version, and PAM loads the module it names in a
transaction of a private service file in the test sandbox (a private mount namespace, never
the host's /etc/pam.d), where the module logs that same version at debug.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PamSandbox, require_root, require_tools
from pam_unshare_testsupport.debian_package import ROOT, project_version

# What the sdist is made of (MANIFEST.in and setuptools' defaults pick from these).
SOURCES = ("csrc", "pam_unshare", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in",
           "packaging/debian/dbus/pam-unshare.conf")
SERVICE = "pu-wheel"


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    require_tools("cc", "make")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("build", "__pycache__", "*.so", "*.o", "*.egg-info", "lib")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=ignore)
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / name)
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-P", "-m", "build", "--outdir", str(out), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"\npython -m build: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel)


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed, as a user would: its dependency (cffi) from the
    index."""
    path = tmp_path_factory.mktemp("venv")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    res = subprocess.run([str(path / "bin" / "pip"), "install", "-q", str(dist.wheel)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"\nfresh venv with the wheel: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return path


def cli(venv: Path, *args: str) -> str:
    res = subprocess.run([str(venv / "bin" / "pam-unshare"), *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"pam-unshare {' '.join(args)}: {res.stdout}{res.stderr}"
    return res.stdout


def test_sdist_builds_from_the_c_sources(dist: Dist):
    with tarfile.open(dist.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    top = f"pam_unshare-{project_version()}"
    assert dist.sdist.name == f"{top}.tar.gz"
    assert {"setup.py", "pyproject.toml", "README.md", "csrc/Makefile", "csrc/module.c",
            "csrc/options.c", "csrc/init/init.c", "csrc/init/blob.S", "csrc/pam_unshare.map",
            "pam_unshare/cli.py", "pam_unshare/_build.py"} <= names, sorted(names)
    # Sources only: nothing built, no tests.
    assert not [n for n in names if n.endswith((".so", ".o")) or n.startswith("tests/")], names


def test_wheel_carries_the_module_and_the_binding(dist: Dist):
    with zipfile.ZipFile(dist.wheel) as whl:
        entries = {info.filename: info.file_size for info in whl.infolist()}
    print(f"\n{dist.wheel.name}: {dist.wheel.stat().st_size} bytes, {len(entries)} files:\n"
          + "\n".join(f"  {size:8d} {name}" for name, size in sorted(entries.items())),
          file=sys.stderr)
    assert dist.wheel.name.startswith(f"pam_unshare-{project_version()}-")
    assert "pam_unshare/lib/pam_unshare.so" in entries
    assert [n for n in entries if n.startswith("pam_unshare/_core.")], entries
    assert "pam_unshare/cli.py" in entries
    assert not [n for n in entries if n.startswith(("csrc/", "tests/"))], entries
    metadata = next(n for n in entries if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(dist.wheel) as whl:
        assert "pam-unshare = pam_unshare.cli:main" in whl.read(metadata).decode()


def test_cli_from_a_fresh_venv(venv: Path, tmp_path: Path):
    assert cli(venv, "--version") == f"pam-unshare {project_version()}\n"
    module = Path(cli(venv, "module-path").strip())
    assert module.is_file() and module.is_relative_to(venv.resolve()), module
    pam_dir = tmp_path / "pam.d"
    pam_dir.mkdir()
    (pam_dir / "other").write_text("session required pam_permit.so\n")
    facts = json.loads(cli(venv, "status", "--json", "--pam-dir", str(pam_dir)))
    assert facts["version"] == project_version()
    assert facts["module"]["built"]["path"] == str(module)
    assert cli(venv, "check", "--pam-dir", str(pam_dir)) == \
        f"ok: no file in {pam_dir} uses pam_unshare.so\n"


def test_pam_loads_the_wheels_module(venv: Path, pam_sandbox: PamSandbox, users):
    """A real PAM transaction through the module the wheel's CLI names, in a private service
    file: the session is namespaced, and the module's debug log names the version."""
    require_root()
    require_tools("pamtester")
    module = cli(venv, "module-path").strip()
    pam_sandbox.sandbox.write_service(SERVICE, f"session required {module} debug\n")
    since = pam_sandbox.syslog.mark()
    res = subprocess.run(["pamtester", "-v", SERVICE, users.alice, "open_session",
                          "close_session"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "session has successfully been closed" in res.stdout + res.stderr
    lines = pam_sandbox.syslog.lines(since)
    opened = [ln for ln in lines if f"pam_unshare {project_version()}: opening a session for "
              f"user {users.alice}" in ln]
    assert len(opened) == 1, lines
    assert [ln for ln in lines if "session init runs as pid" in ln], lines
