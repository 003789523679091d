"""Fixtures shared by the suite.

Everything that changes PAM or accounts happens in a sandbox: this pytest process moves into a
private mount namespace where /etc/pam.d and the account files are throwaway copies (see
pam_unshare.sandbox), so the host's files are never written and nothing needs restoring.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Sequence

import pytest
from pam_unshare_testsupport.debian_package import (
    BUILD_DEB,
    DEBIAN_DIR,
    PACKAGE,
    build_droppings,
    debian_version,
    project_version,
)
from pam_unshare_testsupport.devlog import SyslogCapture
from pam_unshare_testsupport.entries import TEST_SERVICE, Entry, local_tools, make_entries
from pam_unshare_testsupport.sshd import Sshd

from pam_unshare import paths
from pam_unshare.sandbox import Sandbox

IN_CI = bool(os.environ.get("CI"))
# The host's / as this process found it, before any sandbox: paths below it resolve through the
# host's mounts even after the process has moved into the sandbox's mount namespace.
HOST_ROOT = Path(f"/proc/self/fd/{os.open('/', os.O_PATH | os.O_DIRECTORY)}")
ENABLED_SERVICES = ("su", "sudo", "sudo-i", "sshd", TEST_SERVICE)


# The hosts the isolation suite (tests/isolation) runs against when --hosts is not given: this
# machine, booted systemd containers of Debian 12 and 13 and a VM (hosts/tiers.py); all fit in
# CI's time limit (the VM tier takes about 16 minutes under emulation). The VM is the Vagrant box
# (pu-vagrant), which tests the README's Vagrant path too; pu-vm boots the same image without
# Vagrant, on request. PU_TEST_HOSTS replaces the list, e.g. PU_TEST_HOSTS=local:// for a quick run.
DEFAULT_HOSTS = "local://,ssh://pu-container,ssh://pu-container-trixie,ssh://pu-vagrant"


def pytest_configure(config: pytest.Config) -> None:
    if config.option.hosts is None:
        config.option.hosts = os.environ.get("PU_TEST_HOSTS") or DEFAULT_HOSTS
    if config.option.ssh_config is None and "ssh://pu-" in config.option.hosts:
        # The suite's own hosts add themselves here once booted (tests/isolation/conftest.py).
        directory = Path(tempfile.mkdtemp(prefix="pam-unshare-ssh-"))
        (directory / "config").write_text("# hosts booted by this test run\n")
        config.option.ssh_config = str(directory / "config")
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


def require(condition: bool, reason: str) -> None:
    """Skips with REASON where a prerequisite is missing; in CI, where everything is installed
    and the suite runs as root, a missing prerequisite is a failure instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI runs every test: nothing may skip)")
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (namespaces, su, sudo, sshd)")


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    require(not missing, f"needs {', '.join(missing)} installed")


@pytest.fixture(scope="session")
def module_path() -> Path:
    try:
        return paths.module_path()
    except FileNotFoundError as error:
        pytest.fail(str(error))


@dataclass(frozen=True)
class TestUsers:
    alice: str = "pu_alice"
    bob: str = "pu_bob"
    carol: str = "pu_carol"  # member of pu_exempt
    dave: str = "pu_dave"  # member of pu_only
    exempt_group: str = "pu_exempt"
    only_group: str = "pu_only"


class PamSandbox:
    """The sandbox with the module enabled for su, sudo, sshd and the python-pam test service."""

    def __init__(self, workdir: Path, module: Path) -> None:
        self.workdir = workdir
        self.module = str(module)
        self.users = TestUsers()
        self.sandbox = Sandbox(workdir)
        self.sandbox.enter()
        self.syslog = SyslogCapture(workdir)
        self.uids: Dict[str, int] = {}
        base = 62000
        for offset, name in enumerate((self.users.alice, self.users.bob, self.users.carol,
                                       self.users.dave)):
            self.sandbox.add_user(name, base + offset)
            self.uids[name] = base + offset
        self.sandbox.add_group(self.users.exempt_group, base + 10, [self.users.carol])
        self.sandbox.add_group(self.users.only_group, base + 11, [self.users.dave])
        self.sandbox.write_service(
            TEST_SERVICE,
            "auth required pam_permit.so\naccount required pam_permit.so\n"
            "session required pam_permit.so\n",
        )
        self.apply(())

    def apply(self, options: Sequence[str]) -> None:
        self.sandbox.enable(ENABLED_SERVICES, self.module, options)

    @contextlib.contextmanager
    def options(self, *options: str) -> Iterator[None]:
        """Runs the block with our line carrying OPTIONS; back to the defaults afterwards."""
        self.apply(options)
        try:
            yield
        finally:
            self.apply(())

    def close(self) -> None:
        self.syslog.stop()
        self.sandbox.leave()


@pytest.fixture(scope="session")
def pam_sandbox(module_path: Path) -> Iterator[PamSandbox]:
    require_root()
    require_tools("su", "sudo", "sshd", "ps")
    # Not under pytest's 0700 temp tree: the test users must reach their homes and sshd their
    # authorized keys.
    workdir = Path(tempfile.mkdtemp(prefix="pam-unshare-tests-"))
    os.chmod(workdir, 0o755)
    sandbox = PamSandbox(workdir, module_path)
    try:
        yield sandbox
    finally:
        sandbox.close()
        shutil.rmtree(workdir)


@pytest.fixture(scope="session")
def users(pam_sandbox: PamSandbox) -> TestUsers:
    return pam_sandbox.users


@pytest.fixture(scope="session")
def sshd(pam_sandbox: PamSandbox) -> Iterator[Sshd]:
    users = pam_sandbox.users
    server = Sshd(pam_sandbox.workdir / "sshd",
                  [users.alice, users.bob, users.carol, users.dave, "root"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def entries(sshd: Sshd) -> Dict[str, Entry]:
    return make_entries(local_tools(lambda user, cmd, tty: sshd.command(user, cmd, tty=tty)))


@pytest.fixture(scope="session")
def foreign_process(pam_sandbox: PamSandbox) -> Iterator[int]:
    """Host PID of another user's process, outside any session, with a secret on its command
    line: what isolation must hide."""
    uid = pam_sandbox.uids[pam_sandbox.users.bob]
    process = subprocess.Popen(
        ["bash", "-c", 'exec -a "pu-foreign-job --password=hunter2" sleep 3600'],
        user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """packaging/build-deb OUTDIR, once per test session."""
    require_tools("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "python3")
    deps = subprocess.run(["dpkg-checkbuilddeps", str(DEBIAN_DIR / "control")],
                          capture_output=True, text=True)
    require(deps.returncode == 0, f"Build-Depends missing: {deps.stderr.strip()}")
    before = build_droppings()
    out = tmp_path_factory.mktemp("deb")
    t0 = time.monotonic()
    res = subprocess.run([str(BUILD_DEB), str(out)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        pytest.fail(f"build-deb failed (rc {res.returncode}):\n{res.stdout}\n{res.stderr}")
    print(f"\nbuild-deb: {time.monotonic() - t0:.1f}s", file=sys.stderr)
    path = Path(res.stdout.strip().splitlines()[-1])
    assert path == out / f"{PACKAGE}_{debian_version(project_version())}_amd64.deb", res.stdout
    assert path.is_file(), sorted(out.iterdir())
    assert build_droppings() == before, "build-deb left files in the source tree"
    return path
