"""`pam-unshare verify` itself, run as root on each host of the suite: exit 0 where every
channel is closed, exit 1 naming the channel where one is open, nothing left behind, also when
interrupted.

On this machine it runs in the suite's PAM sandbox (the pytest process's mount namespace, which
libpam reads /etc/pam.d from) with --user pu_alice: a throwaway account cannot be made there,
useradd cannot replace the bind-mounted account files. On the remote hosts it is the command of
the pam-unshare package that provisioning installed, with its throwaway user.
"""

from __future__ import annotations

import json
import pwd
import shlex
import sys
from pathlib import Path
from typing import Dict, List

from isolation.targets import REMOTE_HELPERS, LocalTarget, Target
from pam_unshare import probes
from pam_unshare.sandbox import free_id

# On the emulated VM a verify run costs about a minute and exercises the same code as on the
# container: tests/isolation/conftest.py deselects these there (the channel matrix of
# test_channels.py, the same probe, does run on the VM).
NATIVE_SPEED_ONLY = ("test_verify_proves_the_isolation_of_every_enabled_service",
                     "test_verify_names_the_channels_of_a_service_without_the_module",
                     "test_verify_names_systemds_process_lists_without_the_dbus_policy",
                     "test_verify_cleans_up_when_interrupted")
LOCAL_USER = "pu_verifier"
PLAIN_SERVICE = "pu-verify-plain"  # a service that opens sessions without the module
PLAIN_STACK = ("auth required pam_permit.so\naccount required pam_permit.so\n"
               "session required pam_permit.so\n")
DBUS_POLICY = "/usr/share/dbus-1/system.d/pam-unshare.conf"
RELOAD_BUS = ("busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus "
              "ReloadConfig")
SYSTEMD_CHANNELS = ("systemctl-status", "loginctl", "GetUnitProcesses", "systemd-run-user")
_installed: Dict[str, str] = {}


def cli(target: Target) -> str:
    """The pam-unshare command line on TARGET."""
    if target.name not in _installed:
        if isinstance(target, LocalTarget):
            script = Path(sys.executable).parent / "pam-unshare"
            assert script.exists(), f"the console script is not installed next to {sys.executable}"
            _installed[target.name] = shlex.quote(str(script))
        else:
            # Provisioned from the pam-unshare package, as an admin installs it.
            found = target.host.run("command -v pam-unshare")
            assert found.rc == 0, f"{target.name}: no pam-unshare command (the CLI package)"
            _installed[target.name] = found.stdout.strip()
    return _installed[target.name]


def local_user(target: LocalTarget) -> str:
    """A user of the sandbox that no other test logs in as: processes left by other tests'
    sessions (on_logout=linger) must not count as verify's."""
    try:
        pwd.getpwnam(LOCAL_USER)
    except KeyError:
        target.sandbox.sandbox.add_user(LOCAL_USER, free_id())
    return LOCAL_USER


def user_args(target: Target, local_user: str = "pu_alice") -> List[str]:
    return ["--user", local_user] if isinstance(target, LocalTarget) else []


def verify(target: Target, *args: str):  # noqa: ANN201 (a testinfra CommandResult)
    return target.host.run(f"{cli(target)} verify {shlex.join(args)}")


def leftovers(target: Target) -> List[str]:
    """What a verify run must not leave: its foreign process, a throwaway user, its units and
    home directories."""
    found = []
    checks = {
        "process": "ps -eww -o pid=,user:32=,args= | grep -e 'pu-verify-secret-[0]' -e "
                   "'^ *[0-9]* pu-verify-[0]'",
        "user": "getent passwd | grep '^pu-verify-[0-9a-f]*:'",
        "group": "getent group | grep '^pu-verify-[0-9a-f]*:'",
        "home": "ls -d /home/pu-verify-* 2>/dev/null",
        "unit": "[ -d /run/systemd/system ] && systemctl list-units --all --no-legend | "
                "grep pu-verify-",
    }
    for what, command in checks.items():
        # The patterns end in [0-9a-f] classes or [0]: grep's own command line does not match.
        result = target.host.run(command.replace("[0]", "[0-9a-f]"))
        if result.rc == 0 and result.stdout.strip():
            found.append(f"{what}: {result.stdout.strip()}")
    return found


def failed_units(target: Target) -> set[str]:
    """Units in the failed state (a user manager killed instead of stopped stays listed)."""
    result = target.host.run("[ -d /run/systemd/system ] && systemctl list-units --all "
                             "--no-legend --plain --state=failed")
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def assert_clean(target: Target, failed_before: set[str]) -> None:
    assert leftovers(target) == [], f"{target.name}: verify left {leftovers(target)}"
    assert failed_units(target) <= failed_before, f"{target.name}: units failed: " \
        f"{failed_units(target) - failed_before}"


def parse_report(target: Target, result) -> dict:  # noqa: ANN001
    assert "Traceback" not in result.stderr, result.stderr
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"{target.name}: verify --json printed no JSON (rc {result.rc}): "
                             f"{result.stdout[-2000:]} {result.stderr[-2000:]}") from None


def test_verify_proves_the_isolation_of_every_enabled_service(target):
    before = failed_units(target)
    result = verify(target, "--json", *user_args(target))
    report = parse_report(target, result)
    assert result.rc == 0 and report["ok"], (
        f"{target.name}: verify found leaks: {report['leaks']} {report['errors']}")
    assert report["throwaway_user"] == (not isinstance(target, LocalTarget))
    # Every service our sandbox or the host enables runs, su and sudo at least.
    assert {"su", "sudo"} <= set(report["entries"]), report["entries"]
    cells = {(cell["entry"], cell["channel"]): cell["verdict"] for cell in report["cells"]}
    for entry in ["root", *report["entries"]]:
        assert {channel for (e, channel) in cells if e == entry} == set(probes.CHANNELS), entry
    assert all(cells[("root", channel)] == "OPEN" for channel in probes.CONTROL_CHANNELS)
    systemd = target.host.run("test -d /run/systemd/system").rc == 0
    if systemd:
        # The foreign process is in a scope of its own: root's process lists show it there.
        assert report["foreign"]["unit"].startswith("pu-verify-"), report["foreign"]
        assert cells[("root", "systemctl-status")] == "OPEN", report["cells"]
    else:
        assert report["foreign"]["unit"] is None
        assert {verdict for (_, channel), verdict in cells.items()
                if channel in SYSTEMD_CHANNELS} == {"n/a"}, report["cells"]
    assert_clean(target, before)


def _plain_service(target: Target, present: bool) -> None:
    if isinstance(target, LocalTarget):
        path = target.sandbox.sandbox.pam_dir / PLAIN_SERVICE
        if present:
            target.sandbox.sandbox.write_service(PLAIN_SERVICE, PLAIN_STACK)
        else:
            path.unlink(missing_ok=True)
        return
    command = (f"printf %s {shlex.quote(PLAIN_STACK)} > /etc/pam.d/{PLAIN_SERVICE}" if present
               else f"rm -f /etc/pam.d/{PLAIN_SERVICE}")
    assert target.host.run(command).rc == 0


def test_verify_names_the_channels_of_a_service_without_the_module(target):
    before = failed_units(target)
    _plain_service(target, True)
    try:
        result = verify(target, "--service", PLAIN_SERVICE, "--service", "su",
                        *user_args(target))
    finally:
        _plain_service(target, False)
    assert result.rc == 1, f"{target.name}: rc {result.rc}: {result.stdout} {result.stderr}"
    lines = result.stdout.splitlines()
    for channel in ("ps", "proc-list", "proc-files", "kill"):
        assert any(line.startswith(f"OPEN: {channel} through {PLAIN_SERVICE}: ")
                   for line in lines), (channel, result.stdout)
        row = next(line.split() for line in lines if line.split()[:1] == [channel])
        # channel, control, pu-verify-plain, su
        assert row[1:] == ["sees", "OPEN", "closed"], (channel, result.stdout)
    assert not any(" through su: " in line for line in lines), result.stdout
    assert "NOT isolated" in lines[-1], result.stdout
    assert_clean(target, before)


def test_verify_names_systemds_process_lists_without_the_dbus_policy(target):
    """With the package's D-Bus policy gone, systemd lists the foreign scope's processes to
    the session's user: verify must say so. Where systemd is not PID 1 those channels do not
    exist, and verify must say that instead of calling them closed."""
    systemd = target.host.run("test -d /run/systemd/system").rc == 0
    if not systemd:
        result = verify(target, "--service", "su", "--json", *user_args(target))
        report = parse_report(target, result)
        assert result.rc == 0, report
        verdicts = {c["channel"]: c["verdict"] for c in report["cells"] if c["entry"] == "su"}
        assert {verdicts[channel] for channel in SYSTEMD_CHANNELS} == {"n/a"}, verdicts
        return
    before = failed_units(target)
    moved = f"{REMOTE_HELPERS}/pam-unshare.conf.moved"
    assert target.host.run(f"test -f {DBUS_POLICY}").rc == 0, \
        f"{target.name}: the package's D-Bus policy is not installed"
    try:
        assert target.host.run(f"mv {DBUS_POLICY} {moved} && {RELOAD_BUS}").rc == 0
        result = verify(target, "--service", "su", *user_args(target))
    finally:
        restored = target.host.run(f"mv {moved} {DBUS_POLICY} && {RELOAD_BUS}")
    assert restored.rc == 0, restored.stderr
    assert result.rc == 1, f"{target.name}: rc {result.rc}: {result.stdout} {result.stderr}"
    named = {line.split()[1] for line in result.stdout.splitlines()
             if line.startswith("OPEN: ") and " through su: " in line}
    # systemctl status shows the tree too, but systemd sometimes fails the whole dump when a
    # process exits while it reads it: GetUnitProcesses asks for the one scope.
    assert "GetUnitProcesses" in named, result.stdout
    assert named <= {"GetUnitProcesses", "systemctl-status"}, result.stdout
    assert_clean(target, before)


def test_verify_cleans_up_when_interrupted(target):
    """SIGINT while a session's probe runs: the run ends with 130 and leaves nothing."""
    before = failed_units(target)
    user = ["--user", local_user(target)] if isinstance(target, LocalTarget) else []
    # A process of the throwaway user (pu-verify-...) or of the local one: a probe is running.
    pattern = f"^{user[1]}$" if user else "^pu-verify-[0-9a-f]*$"
    script = (f"{cli(target)} verify {shlex.join(user)} >/dev/null 2>&1 & p=$!; i=0; "
              f"while [ $i -lt 1200 ] && ! ps -e -o user:32= | grep -q {shlex.quote(pattern)}; "
              f"do sleep 0.05; i=$((i + 1)); done; "
              f"kill -INT $p; wait $p; echo rc=$? seen=$i")
    result = target.host.run(script)
    assert "rc=130 " in result.stdout, f"{target.name}: {result.stdout} {result.stderr}"
    assert "seen=1200" not in result.stdout, "no session was ever seen: nothing interrupted"
    assert_clean(target, before)
    still = target.host.run(f"ps -e -o user:32= | grep {shlex.quote(pattern)}")
    assert still.stdout.strip() == "", f"{target.name}: processes left: {still.stdout}"
