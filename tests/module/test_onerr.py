"""When the namespace cannot be made, onerr decides: fail refuses the session everywhere (su, sudo,
sshd, plain PAM), succeed lets it run un-namespaced. Either way one error line says why.

The failure is real, not simulated: the caller runs without CAP_SYS_ADMIN (capsh drops it from the
bounding set, so even setuid su and sudo cannot regain it) and cloning into a new PID namespace
gets EPERM.
"""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
from conftest import PamSandbox, require_tools
from pam_unshare_testsupport.devlog import module_lines, severity
from pam_unshare_testsupport.entries import ENTRY_NAMES, Entry
from pam_unshare_testsupport.sshd import Sshd
from testinfra.backend.base import CommandResult
from testinfra.host import Host

DROP_CAP_SYS_ADMIN = ["capsh", "--drop=cap_sys_admin", "--"]
# capsh runs bash with what follows "--": exec the wrapped program in place of that bash, so the
# server's pid stays the one Sshd.stop() signals.
SSHD_WRAPPER = [*DROP_CAP_SYS_ADMIN, "-c", 'exec "$0" "$@"']
STEP = "creating the PID and mount namespaces"
ERRNO_TEXT = "Operation not permitted"
CAP_SYS_ADMIN = 21
LOG_ERR = 3


def without_cap_sys_admin(command: str) -> str:
    """COMMAND run by a root shell whose bounding set lacks CAP_SYS_ADMIN."""
    return shlex.join([*DROP_CAP_SYS_ADMIN, "-c", command])


@pytest.fixture(scope="module", autouse=True)
def _needs_capsh() -> None:
    require_tools("capsh")


@pytest.fixture(scope="module")
def sshd_without_cap_sys_admin(pam_sandbox, users) -> Iterator[Sshd]:
    server = Sshd(pam_sandbox.workdir / "sshd-no-cap-sys-admin", [users.alice],
                  wrapper=SSHD_WRAPPER)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def failing_callers(entries, sshd_without_cap_sys_admin) -> Dict[str, Callable[[str, str], str]]:
    """Per entry name: (user, shell command) -> a root command line whose session cannot get a
    namespace."""
    callers: Dict[str, Callable[[str, str], str]] = {}
    for name in ENTRY_NAMES:
        if name.startswith("ssh-"):
            tty = name == "ssh-pty"
            callers[name] = (
                lambda user, cmd, tty=tty: shlex.join(
                    sshd_without_cap_sys_admin.command(user, cmd, tty=tty)))
        else:
            entry: Entry = entries[name]
            callers[name] = (
                lambda user, cmd, entry=entry: without_cap_sys_admin(entry.command(user, cmd)))
    return callers


@pytest.fixture(scope="module")
def marker_dir(pam_sandbox) -> Path:
    """A directory every test user may create files in."""
    path = pam_sandbox.workdir / "onerr-markers"
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o1777)
    return path


def run_failing_session(host: Host, pam_sandbox: PamSandbox, caller: Callable[[str, str], str],
                        user: str, marker: Path) -> Tuple[CommandResult, List[str]]:
    """Runs a session that touches MARKER and prints facts about its namespace; returns the
    result and the module's syslog lines."""
    probe = (f"touch {shlex.quote(str(marker))}; echo ran:yes; "
             "echo comm:$(cat /proc/1/comm); echo pidns:$(readlink /proc/self/ns/pid)")
    since = pam_sandbox.syslog.mark()
    result = host.run(caller(user, probe))
    return result, module_lines(pam_sandbox.syslog.lines(since))


def bounding_set(pid: str) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no CapBnd in /proc/{pid}/status")


def test_capsh_really_removes_cap_sys_admin(host, sshd_without_cap_sys_admin):
    """The premise: without CAP_SYS_ADMIN in the bounding set even root cannot make a PID
    namespace, so every failure below comes from the module meeting EPERM; and the second sshd
    runs with that bounding set."""
    require_tools("unshare")
    result = host.run(without_cap_sys_admin("unshare --pid --fork true"))
    assert result.rc != 0
    assert ERRNO_TEXT in result.stderr
    server = sshd_without_cap_sys_admin
    pid = (server.workdir / f"sshd.{server.port}.pid").read_text().strip()
    assert not bounding_set(pid) & (1 << CAP_SYS_ADMIN)
    assert bounding_set("self") & (1 << CAP_SYS_ADMIN), "the test itself needs CAP_SYS_ADMIN"


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_onerr_fail_refuses_the_session(host, pam_sandbox, users, failing_callers, marker_dir,
                                        entry_name):
    marker = marker_dir / f"fail-{entry_name}-{uuid.uuid4().hex}"
    result, lines = run_failing_session(host, pam_sandbox, failing_callers[entry_name],
                                        users.alice, marker)
    assert result.rc != 0, f"{entry_name} ran the session: {result.stdout}"
    assert not marker.exists(), f"{entry_name} ran the command in a refused session"
    assert "ran:yes" not in result.stdout
    assert len(lines) == 1, lines
    line = lines[0]
    assert severity(line) == LOG_ERR, line
    assert f"{STEP} failed for user {users.alice}: {ERRNO_TEXT}; refusing the session" \
        in line, line


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_onerr_succeed_runs_the_session_without_a_namespace(host, pam_sandbox, users,
                                                            failing_callers, marker_dir,
                                                            entry_name):
    host_pidns = os.readlink("/proc/self/ns/pid")
    with open("/proc/1/comm", encoding="utf-8") as handle:
        host_init = handle.read().strip()
    marker = marker_dir / f"succeed-{entry_name}-{uuid.uuid4().hex}"
    with pam_sandbox.options("onerr=succeed"):
        result, lines = run_failing_session(host, pam_sandbox, failing_callers[entry_name],
                                            users.alice, marker)
    assert result.rc == 0, f"{entry_name}: {result.stderr}"
    assert marker.exists()
    output = result.stdout.replace("\r", "")
    assert "ran:yes\n" in output
    assert f"comm:{host_init}\n" in output and "comm:pam_unshare\n" not in output, output
    assert f"pidns:{host_pidns}\n" in output, output
    assert len(lines) == 1, lines
    line = lines[0]
    assert severity(line) == LOG_ERR, line
    assert f"{STEP} failed for user {users.alice}: {ERRNO_TEXT}; session continues " \
        "without a namespace (onerr=succeed)" in line, line
    assert line.endswith("(onerr=succeed)"), line


def test_sudo_does_not_run_the_command_when_the_module_refuses(host, pam_sandbox, users,
                                                              marker_dir):
    """sudo runs the command anyway after PAM_SESSION_ERR; the module must return a code sudo
    treats as fatal. Checked on sudo's own account of the run, not only on the exit status."""
    marker = marker_dir / f"sudo-{uuid.uuid4().hex}"
    since = pam_sandbox.syslog.mark()
    result = host.run(without_cap_sys_admin(shlex.join(["sudo", "-u", users.alice, "--", "touch",
                                                        str(marker)])))
    sudo_lines = [line for line in pam_sandbox.syslog.lines(since)
                  if " sudo" in line and "pam_unshare(" not in line]
    assert result.rc != 0
    assert not marker.exists()
    # sudo itself stopped at pam_open_session, and said so.
    assert "pam_open_session" in result.stderr, result.stderr
    assert any("pam_open_session" in line for line in sudo_lines), sudo_lines


def test_a_malformed_onerr_still_refuses_a_failed_session(host, pam_sandbox, users):
    """onerr=sometimes keeps onerr=fail: when the namespace cannot be made (no CAP_SYS_ADMIN),
    the session is refused rather than run without one."""
    require_tools("capsh")
    markers = pam_sandbox.workdir / "exemption-markers"
    markers.mkdir(exist_ok=True)
    os.chmod(markers, 0o1777)  # alice could create the marker had her command run
    marker = markers / f"onerr-{uuid.uuid4().hex}"
    su = shlex.join(["su", users.alice, "-c", f"echo ran:yes; touch {marker}"])
    since = pam_sandbox.syslog.mark()
    with pam_sandbox.options("onerr=sometimes"):
        result = host.run(shlex.join(["capsh", "--drop=cap_sys_admin", "--", "-c", su]))
    lines = module_lines(pam_sandbox.syslog.lines(since))
    assert result.rc != 0
    assert "ran:yes" not in result.stdout and not marker.exists()
    assert any('ignoring option "onerr=sometimes"' in line for line in lines), lines
    assert any(line.endswith("; refusing the session") for line in lines), lines
