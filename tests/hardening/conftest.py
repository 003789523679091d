"""Fixtures of the hardening tests: the fault shim, callers that load it, a dedicated sshd.

Long versions: PU_HARDENING=full (tests/hardening/run-all sets it) turns the soak and the hostile
loops up to the issue's figures; by default they run short enough for CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest
from conftest import PamSandbox, require_tools
from pam_unshare_testsupport.sshd import Sshd

from hardening.faults import CSRC, FaultDir

FULL = os.environ.get("PU_HARDENING", "") == "full"
STATE_DIR = "/run/pam_unshare"

Caller = Callable[[str, str], List[str]]


def figure(name: str, value: object) -> None:
    """One line for the note's figures; run-all collects them from pytest's output (-s)."""
    print(f"\nFIGURE {name}: {value}", flush=True)


@pytest.fixture(scope="package", autouse=True)
def private_module(pam_sandbox: PamSandbox) -> Iterator[Path]:
    """A copy of the module, enabled in place of the installed one for these tests: a soak of
    thousands of logins must not meet the moment another run reinstalls the package (the file is
    briefly missing then, and PAM says "Module is unknown")."""
    installed = pam_sandbox.module
    copy = pam_sandbox.workdir / "module" / "pam_unshare.so"
    copy.parent.mkdir(exist_ok=True)
    os.chmod(copy.parent, 0o755)
    shutil.copy2(installed, copy)
    pam_sandbox.module = str(copy)
    pam_sandbox.apply(())
    try:
        yield copy
    finally:
        pam_sandbox.module = installed
        pam_sandbox.apply(())


@pytest.fixture(scope="session")
def fault_shim(pam_sandbox: PamSandbox) -> Path:
    """csrc/test/fault_shim.c built by its own make target, where the test users can read it (the
    user's shell under su inherits LD_PRELOAD)."""
    require_tools("make", "cc")
    out = pam_sandbox.workdir / "fault-build"
    build = subprocess.run(["make", "-C", str(CSRC), f"O={out}", "fault-shim"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    shim = out / "test" / "fault_shim.so"
    os.chmod(out, 0o755)
    os.chmod(out / "test", 0o755)
    return shim


@pytest.fixture(scope="session")
def fault_dir(pam_sandbox: PamSandbox, fault_shim: Path) -> FaultDir:
    return FaultDir(pam_sandbox.workdir / "faults", fault_shim)


@pytest.fixture(scope="session")
def fault_sshd(pam_sandbox: PamSandbox, fault_dir: FaultDir) -> Iterator[Sshd]:
    """An sshd whose every connection loads the shim (sshd re-execs itself per connection with
    its environment, and the shim reads PU_FAULT_DIR/spec anew in each)."""
    users = pam_sandbox.users
    server = Sshd(pam_sandbox.workdir / "sshd-faults", [users.alice, users.bob],
                  wrapper=fault_dir.wrapper())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_callers(fault_dir: FaultDir, fault_sshd: Sshd) -> Dict[str, Caller]:
    """su, sudo and sshd, each with the shim loaded into the process that opens the session.
    su and sudo are setuid root, but run by root nothing changes identity, so the loader honours
    LD_PRELOAD (no secure execution)."""
    wrapper = fault_dir.wrapper()
    return {
        "su": lambda user, cmd: [*wrapper, "su", user, "-c", cmd],
        "sudo": lambda user, cmd: [*wrapper, "sudo", "-u", user, "--", "sh", "-c", cmd],
        "sshd": lambda user, cmd: fault_sshd.command(user, cmd),
    }


@pytest.fixture(scope="session")
def marker_dir(pam_sandbox: PamSandbox) -> Path:
    path = pam_sandbox.workdir / "hardening-markers"
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o1777)
    return path


@pytest.fixture
def user_state_dir() -> Iterator[None]:
    """scope=user makes /run/pam_unshare; remove it again if this test made it."""
    existed = os.path.exists(STATE_DIR)
    yield
    if not existed:
        shutil.rmtree(STATE_DIR, ignore_errors=True)
