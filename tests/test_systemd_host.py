"""pam_unshare on a host with real systemd as PID 1 (a booted systemd-nspawn container).

On such a host ``/`` is a shared mount and /proc has mounts below it: the two things that broke
the 2016 sketch (see DESIGN.md). The module goes last in the session stacks of su and sudo, after
``@include common-session`` (pam_loginuid, pam_systemd), and every entry path must give the user a
private PID namespace with its own /proc, while the container's and the host's /proc stay intact.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hosts.fixtures import systemd_container  # noqa: F401
from hosts.systemd_container import SystemdContainer
from pam_unshare_testsupport.entries import IN_PTY

from pam_unshare import usermanager

MODULE_DEST = "/usr/lib/x86_64-linux-gnu/security/pam_unshare.so"
PAM_LINE = "session required pam_unshare.so"
SERVICES = ("su", "sudo")
ALICE = "pu_alice"
BOB = "pu_bob"
SUDOERS_DROPIN = "/etc/sudoers.d/pu-test"
PROBE = "/usr/local/bin/pu-probe"
IN_PTY_DEST = "/usr/local/bin/pu-in-pty"
# What a session reports; $1 is the container PID of pu_bob's marker process.
PROBE_SCRIPT = b"""#!/bin/sh
marker="$1"
echo "uid=$(id -u)"
echo "pid1=$(cat /proc/1/comm)"
echo "self=$(readlink /proc/self)"
echo "cgroup=$(grep '^0::' /proc/self/cgroup)"
if [ -e "/proc/$marker" ]; then echo "marker_proc=present"; else echo "marker_proc=absent"; fi
echo "marker_kill=$(kill -0 "$marker" 2>&1 && echo alive)"
echo "--- ps"
ps -e -o pid=,user=,comm=
"""
PROBE_VALUE = re.compile(r"\b(uid|pid1|self|cgroup|marker_proc|marker_kill)=(.*)$")
PS_ROW = re.compile(r"(\d+)\s+(\S+)\s+(\S.*)$")
# Processes of the container itself that must never be visible inside a session.
CONTAINER_DAEMONS = {"systemd", "systemd-journal", "systemd-logind", "dbus-daemon", "sshd"}


def proc_mounts(ct: SystemdContainer) -> list[str]:
    """Mount points at or below /proc in the container's own mount namespace."""
    out = ct.run(["findmnt", "-rn", "-o", "TARGET,FSTYPE,PROPAGATION"], check=True).stdout
    return sorted(ln for ln in out.splitlines() if ln == "/proc" or ln.startswith("/proc"))


def host_proc_mounts() -> list[str]:
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target == "/proc" or target.startswith("/proc/"):
            targets.append(target)
    return sorted(targets)


@dataclass
class PamHost:
    ct: SystemdContainer
    proc_mounts_before: list[str]
    host_proc_mounts_before: list[str]
    host_pid1_comm: str
    originals: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def pam_host(systemd_container: SystemdContainer, module_path: Path) -> Iterator[PamHost]:  # noqa: F811
    """Install the module in the container, put it last in su's and sudo's session stacks."""
    ct = systemd_container
    host = PamHost(
        ct=ct,
        proc_mounts_before=proc_mounts(ct),
        host_proc_mounts_before=host_proc_mounts(),
        host_pid1_comm=Path("/proc/1/comm").read_text().strip(),
    )
    ct.write_file(MODULE_DEST, module_path.read_bytes(), 0o644)
    ct.write_file(PROBE, PROBE_SCRIPT, 0o755)
    ct.write_file(IN_PTY_DEST, Path(IN_PTY).read_bytes(), 0o755)
    for service in SERVICES:
        path = f"/etc/pam.d/{service}"
        original = ct.read_file(path)
        host.originals[path] = original
        sep = "" if original.endswith("\n") else "\n"
        ct.write_file(path, f"{original}{sep}{PAM_LINE}\n".encode(), 0o644)
        session_lines = [
            ln.split()
            for ln in ct.read_file(path).splitlines()
            if ln.split()[:1] in (["session"], ["@include"]) and "session" in ln
        ]
        assert session_lines[-1] == PAM_LINE.split(), f"{path}: our line is not the last"
    # pam_systemd needs /proc/self, so it must run before us (DESIGN.md); su includes it via
    # common-session. (Debian 12's sudo includes common-session-noninteractive: no pam_systemd.)
    common = ct.read_file("/etc/pam.d/common-session")
    assert "pam_systemd.so" in common, common
    for user in (ALICE, BOB):
        if ct.run(["id", "-u", user]).returncode != 0:
            ct.run(["useradd", "-m", user], check=True)
    yield host
    ct.run(["pkill", "-KILL", "-u", BOB])
    ct.run(["rm", "-f", SUDOERS_DROPIN])
    for path, original in host.originals.items():
        ct.write_file(path, original.encode(), 0o644)


@pytest.fixture(scope="module")
def bob_marker(pam_host: PamHost) -> int:
    """A long-running process of pu_bob, in his own su session; its PID in the container."""
    ct = pam_host.ct
    ct.run(
        f"setsid su {BOB} -c 'exec sleep 1000' </dev/null >/dev/null 2>&1 &",
        check=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        res = ct.run(["pgrep", "-u", BOB, "-x", "sleep"])
        if res.returncode == 0:
            pid = int(res.stdout.split()[0])
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"pu_bob's marker never started; journal:\n{ct.journal()[-3000:]}")
    # Control: from the container's root namespace the marker is visible and alive.
    assert ct.read_file(f"/proc/{pid}/comm").strip() == "sleep"
    assert ct.run(["kill", "-0", str(pid)]).returncode == 0
    return pid


@dataclass
class Probe:
    values: dict[str, str]
    procs: list[tuple[int, str, str]]  # pid, user, comm

    @classmethod
    def parse(cls, output: str) -> Probe:
        """Tolerates terminal noise: through a pty, echoed control characters can precede the
        first line."""
        values: dict[str, str] = {}
        procs: list[tuple[int, str, str]] = []
        in_ps = False
        for raw in output.replace("\r", "").splitlines():
            if raw.endswith("--- ps"):
                in_ps = True
            elif in_ps and raw.strip():
                match = PS_ROW.search(raw)
                assert match, f"unexpected ps line {raw!r} in:\n{output}"
                procs.append((int(match[1]), match[2], match[3]))
            elif match := PROBE_VALUE.search(raw):
                values[match[1]] = match[2]
        return cls(values, procs)


@dataclass(frozen=True)
class EntryPath:
    name: str
    argv: list[str]  # {probe} is replaced by the probe command line
    use_pty: bool | None = None  # sudoers Defaults written to the drop-in; None: Debian's default
    tty: bool = False  # run under script(1), so the caller has a terminal
    monitor: bool | None = None  # whether sudo's monitor process must be inside the session


ENTRY_PATHS = [
    EntryPath("su -c", ["su", ALICE, "-c", "{probe}"]),
    EntryPath("su - -c", ["su", "-", ALICE, "-c", "{probe}"]),
    EntryPath("su -c, tty", ["su", ALICE, "-c", "{probe}"], tty=True),
    # Debian 12's /etc/sudoers has `Defaults use_pty`; sudo 1.9.13 uses a pty only with a tty.
    EntryPath("sudo, Debian defaults", ["sudo", "-u", ALICE, "{probe}"], monitor=False),
    EntryPath(
        "sudo use_pty, tty", ["sudo", "-u", ALICE, "{probe}"], use_pty=True, tty=True, monitor=True
    ),
    EntryPath(
        "sudo !use_pty -S", ["sudo", "-S", "-u", ALICE, "{probe}"], use_pty=False, monitor=False
    ),
    EntryPath(
        "sudo !use_pty, tty",
        ["sudo", "-u", ALICE, "{probe}"],
        use_pty=False,
        tty=True,
        monitor=False,
    ),
]


def recent_journal(ct: SystemdContainer, lines: int = 40) -> str:
    """The end of the container's journal, for failure messages."""
    return ct.journal(None, "-n", str(lines))


def run_entry(ct: SystemdContainer, entry: EntryPath, probe: str) -> subprocess.CompletedProcess:
    if entry.use_pty is None:
        ct.run(["rm", "-f", SUDOERS_DROPIN], check=True)
    else:
        line = "Defaults use_pty\n" if entry.use_pty else "Defaults !use_pty\n"
        ct.write_file(SUDOERS_DROPIN, line.encode(), 0o440)
    argv: list[str] = []
    for arg in entry.argv:
        if arg != "{probe}":
            argv.append(arg)
        elif argv[-1] == "-c":  # su -c takes one shell command line
            argv.append(probe)
        else:  # sudo takes the command's argv
            argv += shlex.split(probe)
    if entry.tty:
        argv = ["python3", IN_PTY_DEST, *argv]
    return ct.run(argv, timeout=60)


def test_root_is_shared(systemd_container: SystemdContainer) -> None:  # noqa: F811
    """The whole point of this host: / is a shared mount, as on every systemd machine."""
    res = systemd_container.run(["findmnt", "-no", "PROPAGATION", "/"], check=True)
    assert res.stdout.strip() == "shared"
    assert systemd_container.read_file("/proc/1/comm").strip() == "systemd"


@pytest.mark.parametrize("entry", ENTRY_PATHS, ids=[e.name for e in ENTRY_PATHS])
def test_session_sees_only_itself(pam_host: PamHost, bob_marker: int, entry: EntryPath) -> None:
    ct = pam_host.ct
    res = run_entry(ct, entry, f"{PROBE} {bob_marker}")
    detail = f"{entry.name}: rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    if res.returncode != 0:
        pytest.fail(f"{detail}\njournal:\n{recent_journal(ct)}")
    probe = Probe.parse(res.stdout)
    uid = ct.run(["id", "-u", ALICE], check=True).stdout.strip()
    assert probe.values.get("uid") == uid, detail
    # Our init is PID 1 of the session, and /proc is the session's own.
    assert probe.values.get("pid1") == "pam_unshare", detail
    assert probe.values.get("self", "").isdigit(), detail
    assert (1, "root", "pam_unshare") in probe.procs, detail
    # pu_bob's marker is in another namespace: no /proc entry, and kill says ESRCH (not EPERM).
    assert probe.values.get("marker_proc") == "absent", detail
    assert "No such process" in probe.values.get("marker_kill", ""), detail
    comms = {comm for _, _, comm in probe.procs}
    users = {user for _, user, _ in probe.procs}
    assert "sleep" not in comms, detail
    assert not comms & CONTAINER_DAEMONS, detail
    assert users <= {"root", ALICE}, detail
    root_procs = {comm for _, user, comm in probe.procs if user == "root"}
    assert root_procs <= {"pam_unshare", "sudo"}, detail
    assert len(probe.procs) <= 6, detail
    if entry.monitor is not None:
        # Proves which sudo code path ran: with a pty its monitor is the first child.
        assert ("sudo" in root_procs) == entry.monitor, detail
    if entry.argv[0] == "su":
        # pam_systemd (before us in common-session) registered the session with logind.
        assert "session-" in probe.values.get("cgroup", ""), detail


def test_su_login_twenty_times(pam_host: PamHost) -> None:
    """`su - pu_alice` (a login shell reading its commands from stdin) succeeds every time."""
    for i in range(20):
        res = pam_host.ct.run(["su", "-", ALICE], input="cat /proc/1/comm\n", timeout=60)
        if res.returncode != 0:
            pytest.fail(
                f"run {i}: rc {res.returncode}\n{res.stdout}{res.stderr}\n"
                f"journal:\n{recent_journal(pam_host.ct)}"
            )
        assert res.stdout.strip() == "pam_unshare", f"run {i}: {res.stdout!r} {res.stderr!r}"


def test_su_login_twenty_times_tty(pam_host: PamHost) -> None:
    """The same with a terminal (pam_unshare_testsupport/in_pty.py)."""
    for i in range(20):
        res = pam_host.ct.run(
            ["python3", IN_PTY_DEST, "su", "-", ALICE, "-c", "cat /proc/1/comm"],
            timeout=60,
        )
        if res.returncode != 0:
            pytest.fail(
                f"run {i}: rc {res.returncode}\n{res.stdout}{res.stderr}\n"
                f"journal:\n{recent_journal(pam_host.ct)}"
            )
        # The last line: a pty may echo control characters (^@, ^D) ahead of the output.
        last = res.stdout.replace("\r", "").strip().splitlines()[-1:]
        assert last == ["pam_unshare"], f"run {i}: {res.stdout!r} {res.stderr!r}"


def test_no_errors_logged(pam_host: PamHost) -> None:
    """Neither pam_systemd nor pam_unshare logs anything at priority err or worse."""
    ct = pam_host.ct
    # Make sure sessions of both services happened in this boot, whatever ran before.
    ct.run(["su", ALICE, "-c", "true"], check=True)
    ct.run(["rm", "-f", SUDOERS_DROPIN], check=True)
    ct.run(["sudo", "-u", ALICE, "true"], check=True)
    # Not vacuous: the journal does hold the PAM lines of both services.
    opened = ct.journal(None, "--grep", f"session opened for user {ALICE}")
    for ident in SERVICES:
        assert f" {ident}[" in opened, opened
    errors = ct.journal(None, "-p", "err")
    warnings = ct.journal(None, "-p", "warning")
    context = f"journal -p err:\n{errors}\njournal -p warning:\n{warnings}"
    assert [ln for ln in errors.splitlines() if "pam_systemd" in ln] == [], context
    assert [ln for ln in errors.splitlines() if "pam_unshare" in ln] == [], context
    for ident in SERVICES:
        own = ct.journal(None, "-p", "err", f"SYSLOG_IDENTIFIER={ident}")
        assert "pam_unshare" not in own, context


def test_proc_intact_after_sessions(pam_host: PamHost) -> None:
    """Sessions leave the container's and the host's /proc as they were."""
    ct = pam_host.ct
    # A fresh nsenter shell, not inside any session.
    self_link = ct.run(["readlink", "/proc/self"], check=True).stdout.strip()
    assert self_link.isdigit(), self_link
    assert ct.read_file("/proc/1/comm").strip() == "systemd"
    assert ct.run(["findmnt", "-no", "PROPAGATION", "/"], check=True).stdout.strip() == "shared"
    assert proc_mounts(ct) == pam_host.proc_mounts_before
    # The host outside the container.
    assert os.readlink("/proc/self") == str(os.getpid())
    assert Path("/proc/1/comm").read_text().strip() == pam_host.host_pid1_comm
    assert host_proc_mounts() == pam_host.host_proc_mounts_before


def test_no_session_leftovers(pam_host: PamHost, bob_marker: int) -> None:
    """Finished sessions leave neither their init nor zombies in the container.

    Only pu_bob's marker session (still running) may keep a pam_unshare init.
    """
    ct = pam_host.ct
    deadline = time.monotonic() + 15
    while True:
        ps = ct.run(["ps", "-e", "-o", "pid=,ppid=,stat=,user=,comm="], check=True).stdout
        rows = [ln.split(None, 4) for ln in ps.splitlines() if ln.strip()]
        inits = [r for r in rows if r[4] == "pam_unshare"]
        zombies = [r for r in rows if r[2].startswith("Z")]
        if (len(inits) <= 1 and not zombies) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(inits) == 1, ps  # pu_bob's, still running `sleep`
    assert zombies == [], ps
    # The marker session itself is untouched by everything that ran meanwhile.
    assert ct.run(["kill", "-0", str(bob_marker)]).returncode == 0, ps


# ---- systemd's D-Bus view (issue 13, item 1) ----------------------------------------------------

DBUS_POLICY_SOURCE = (Path(__file__).resolve().parent.parent
                      / "packaging/debian/dbus/pam-unshare.conf")
DBUS_POLICY_DEST = "/usr/share/dbus-1/system.d/pam-unshare.conf"
FOREIGN_UNIT = "pu-foreign"
FOREIGN_SECRET = "hunter2"
RELOAD_BUS = ["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
              "org.freedesktop.DBus", "ReloadConfig"]
# Each lists processes of units through the bus, with their command lines.
DBUS_CHANNELS = {
    "systemctl status": "systemctl status --no-pager --lines=0 2>&1",
    "systemctl status UNIT": f"systemctl status {FOREIGN_UNIT} --no-pager --lines=0 2>&1",
    "loginctl session-status": "for s in $(loginctl list-sessions --no-legend | awk "
                               f"'$3 == \"{BOB}\" {{print $1}}'); do "
                               "loginctl session-status $s --no-pager 2>&1; done",
    "loginctl user-status": f"loginctl user-status {BOB} --no-pager 2>&1",
    "GetUnitProcesses": "busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                        "org.freedesktop.systemd1.Manager GetUnitProcesses s "
                        f"{FOREIGN_UNIT}.service 2>&1",
    "GetProcesses": "busctl call org.freedesktop.systemd1 "
                    "/org/freedesktop/systemd1/unit/pu_2dforeign_2eservice "
                    "org.freedesktop.systemd1.Service GetProcesses 2>&1",
}


LOGINCTL_CHANNELS = {"loginctl session-status", "loginctl user-status"}


@pytest.fixture(scope="module")
def foreign_unit(pam_host: PamHost) -> Iterator[str]:
    """A service of pu_bob's with a secret on its command line, outside any session."""
    ct = pam_host.ct
    ct.run(["systemd-run", f"--unit={FOREIGN_UNIT}", f"--uid={BOB}", "--description=pu foreign",
            "--", "bash", "-c", f'exec -a "pu-foreign --password={FOREIGN_SECRET}" sleep 1000'],
           check=True)
    deadline = time.monotonic() + 60
    while FOREIGN_SECRET not in ct.run(["ps", "-u", BOB, "-o", "args="]).stdout:
        assert time.monotonic() < deadline, (
            "pu_bob's unit did not start: "
            + ct.run(["systemctl", "status", FOREIGN_UNIT, "--no-pager"]).stdout)
        time.sleep(0.1)
    yield FOREIGN_UNIT
    ct.run(["systemctl", "stop", FOREIGN_UNIT])


def dbus_leaks(ct: SystemdContainer) -> dict[str, str]:
    """Each D-Bus channel run by pu_alice in a namespaced su session: the ones that show the
    secret, with their output."""
    leaks, seen = {}, {}
    for name, command in DBUS_CHANNELS.items():
        # Up to five tries: systemd fails the whole dump ("Failed to dump process list") when a
        # process of the tree exits while it reads it, as those of the previous login do; a
        # leak in any try counts.
        for attempt in range(5):
            if attempt:
                time.sleep(0.5)
            result = ct.run(["su", ALICE, "-c", f"cat /proc/1/comm; {command}"], timeout=60)
            assert result.stdout.startswith("pam_unshare\n"), f"{name}: not namespaced: {result}"
            seen[name] = result.stdout
            if FOREIGN_SECRET in result.stdout:
                leaks[name] = result.stdout[-400:]
                break
    dbus_leaks.seen = seen  # type: ignore[attr-defined]
    return leaks


def test_dbus_channels_leak_without_the_policy(pam_host: PamHost, foreign_unit: str) -> None:
    """Control: without the policy a namespaced user reads the foreign command line through
    systemd's bus; the probes below would see a leak."""
    ct = pam_host.ct
    ct.run(["rm", "-f", DBUS_POLICY_DEST], check=True)
    ct.run(RELOAD_BUS, check=True)
    leaks = dbus_leaks(ct)
    # All go through GetUnitProcesses / GetProcesses. Not required here: loginctl (pu_bob has
    # no login session of his own here, so it shows no process even without the policy) and
    # the whole tree (systemd fails the whole dump with EIO now and then when a
    # process exits while it reads the tree); both stay probed under the policy as guards.
    assert set(leaks) >= set(DBUS_CHANNELS) - LOGINCTL_CHANNELS - {"systemctl status"}, (
        sorted(leaks), dbus_leaks.seen)  # type: ignore[attr-defined]


def test_the_dbus_policy_closes_every_process_listing(pam_host: PamHost,
                                                      foreign_unit: str) -> None:
    ct = pam_host.ct
    ct.write_file(DBUS_POLICY_DEST, DBUS_POLICY_SOURCE.read_bytes(), 0o644)
    try:
        ct.run(RELOAD_BUS, check=True)
        leaks = dbus_leaks(ct)
        assert leaks == {}, "LEAK on the systemd container through su via " + ", ".join(
            f"{name}: {out!r}" for name, out in leaks.items())
        # Everything else keeps working for the user.
        for command in (f"systemctl is-active {FOREIGN_UNIT}", "loginctl list-sessions",
                        "timedatectl show -p NTP",
                        f"systemctl show -p ActiveState {FOREIGN_UNIT}"):
            result = ct.run(["su", ALICE, "-c", command], timeout=60)
            assert result.returncode == 0, f"{command}: {result.stdout} {result.stderr}"
        unit = ct.run(["su", ALICE, "-c", f"systemctl status {FOREIGN_UNIT} --no-pager"])
        assert "active (running)" in unit.stdout, unit.stdout
        # Root keeps the full view (systemctl talks to systemd over its private socket).
        root = ct.run(["systemctl", "status", FOREIGN_UNIT, "--no-pager"])
        assert FOREIGN_SECRET in root.stdout, root.stdout
    finally:
        ct.run(["rm", "-f", DBUS_POLICY_DEST])
        ct.run(RELOAD_BUS)


# ---- sidesteps: the user manager, cron and at (issue 13, item 3) -------------------------------

CAROL = "pu_carol"  # exempt from the module in cron and atd: the control that sees everything
SIDESTEP_LINE = f"session required pam_unshare.so exempt_users=root,{CAROL}"
SIDESTEP_SERVICES = ("cron", "atd")
USER_DROPIN = f"/etc/systemd/system/{usermanager.DROPIN_DIR}/{usermanager.DROPIN_NAME}"
# What each sidestep job reports: who is PID 1 of its view, then every command line it sees.
VIEW = "cat /proc/1/comm; ps -eo user=,args="


@pytest.fixture(scope="module")
def sidestep_host(pam_host: PamHost, foreign_unit: str) -> Iterator[PamHost]:
    """cron and atd run the module (pu_carol exempt, the control); pu_alice lingers, so her user
    manager runs."""
    ct = pam_host.ct
    if ct.run(["id", "-u", CAROL]).returncode != 0:
        ct.run(["useradd", "-m", CAROL], check=True)
    originals = {}
    for service in SIDESTEP_SERVICES:
        path = f"/etc/pam.d/{service}"
        originals[path] = ct.read_file(path)
        ct.write_file(path, f"{originals[path].rstrip()}\n{SIDESTEP_LINE}\n".encode(), 0o644)
    for user in (ALICE, CAROL):
        ct.run(["loginctl", "enable-linger", user], check=True)
    yield pam_host
    for path, text in originals.items():
        ct.write_file(path, text.encode(), 0o644)
    ct.run(["rm", "-f", "/etc/cron.d/pu-sidestep", USER_DROPIN, "/etc/pam.d/systemd-user"])
    ct.run(["systemctl", "daemon-reload"])
    for user in (ALICE, CAROL):
        ct.run(["loginctl", "disable-linger", user])


def uid_of(ct: SystemdContainer, user: str) -> str:
    return ct.run(["id", "-u", user], check=True).stdout.strip()


def restart_user_manager(ct: SystemdContainer, user: str) -> None:
    ct.run(["systemctl", "daemon-reload"], check=True)
    unit = f"user@{uid_of(ct, user)}.service"
    result = ct.run(["systemctl", "restart", unit], timeout=90)
    assert result.returncode == 0, (result.stderr, ct.journal(unit)[-2000:])


def as_user_manager(ct: SystemdContainer, command: str) -> subprocess.CompletedProcess:
    """COMMAND run by pu_alice's user manager, asked from inside her namespaced su session."""
    user_run = ("export XDG_RUNTIME_DIR=/run/user/$(id -u); cat /proc/1/comm; "
                f"systemd-run --user --pipe --quiet --wait sh -c {shlex.quote(command)}")
    return ct.run(["su", ALICE, "-c", user_run], timeout=90)


def test_the_user_manager_is_a_way_around_without_the_dropin(sidestep_host: PamHost) -> None:
    """Control: from inside a namespaced session, `systemd-run --user` runs in the host's PID
    namespace and lists the foreign command line."""
    ct = sidestep_host.ct
    ct.run(["rm", "-f", USER_DROPIN], check=True)
    restart_user_manager(ct, ALICE)
    result = as_user_manager(ct, "ps -eo args=")
    assert result.stdout.startswith("pam_unshare\n"), result
    assert FOREIGN_SECRET in result.stdout, result


def test_the_dropin_closes_the_user_manager(sidestep_host: PamHost) -> None:
    """With `pam-unshare enable systemd-user`'s drop-in, the user manager and the services it
    starts (systemd-run --user's, a user timer's) see only the user's own processes."""
    ct = sidestep_host.ct
    ct.run(["mkdir", "-p", os.path.dirname(USER_DROPIN)], check=True)
    ct.write_file(USER_DROPIN, usermanager.DROPIN_TEXT.encode(), 0o644)
    restart_user_manager(ct, ALICE)
    foreign = ct.run(["pgrep", "-u", BOB, "-f", FOREIGN_SECRET], check=True).stdout.split()[0]
    result = as_user_manager(ct, f"ps -eo user=,args=; kill -0 {foreign} 2>&1; echo done")
    assert result.stdout.startswith("pam_unshare\n") and "done" in result.stdout, result
    assert FOREIGN_SECRET not in result.stdout, "LEAK on the systemd container through " \
        f"systemd-run --user via ps: {result.stdout}"
    users = {ln.split()[0] for ln in result.stdout.splitlines()[1:] if ln.startswith("pu_")
             or ln.startswith("root")}
    assert users <= {ALICE}, result.stdout
    # What stays (README, Limits): the process exists for kill(2), which refuses it.
    assert "Operation not permitted" in result.stdout, result.stdout
    # A user timer: its service starts when the manager says so, not from any session. (Made by
    # root through the manager's bus: systemd-run --user without --pipe cannot reach the
    # manager from inside a namespaced session, README.) AccuracySec: a timer may otherwise
    # wait up to a minute.
    out = f"/tmp/pu-timer-{uid_of(ct, ALICE)}"
    ct.run(["rm", "-f", out])
    made = ct.run(["systemd-run", "--user", "-M", f"{ALICE}@.host", "--on-active=1",
                   "--timer-property=AccuracySec=10ms", "--unit=pu-timer-probe", "sh", "-c",
                   f"ps -eo user=,args= > {out}.tmp && mv {out}.tmp {out}"], timeout=60)
    assert made.returncode == 0, made
    seen = wait_for_files(ct, [out], 60)[out]
    assert FOREIGN_SECRET not in seen and BOB not in seen, "LEAK on the systemd container " \
        f"through a user timer via ps: {seen}"
    assert {row.split()[0] for row in seen.splitlines()} <= {ALICE}, seen


def test_a_line_in_systemd_user_is_refused_in_one_clear_line(sidestep_host: PamHost) -> None:
    """A line of ours added to systemd-user by hand cannot namespace the manager (PID 1 execs it
    in the caller itself): the module refuses the session with one line naming the cover, the
    manager does not start (onerr=fail), and su keeps working."""
    ct = sidestep_host.ct
    ct.run(["rm", "-f", USER_DROPIN], check=True)
    vendor = ct.read_file("/usr/lib/pam.d/systemd-user")
    ct.write_file("/etc/pam.d/systemd-user", f"{vendor.rstrip()}\n{PAM_LINE}\n".encode(), 0o644)
    try:
        unit = f"user@{uid_of(ct, ALICE)}.service"
        ct.run(["systemctl", "daemon-reload"], check=True)
        ct.run(["systemctl", "restart", unit], timeout=90)
        assert ct.run(["systemctl", "is-active", unit]).stdout.strip() != "active"
        lines = [ln for ln in ct.journal(unit).splitlines() if "pam_unshare(" in ln]
        assert lines and "pam-unshare enable systemd-user" in lines[-1], lines
        assert "refusing the session" in lines[-1], lines
        login = ct.run(["su", ALICE, "-c", "cat /proc/1/comm"], timeout=60)
        assert login.stdout == "pam_unshare\n", login
    finally:
        ct.run(["rm", "-f", "/etc/pam.d/systemd-user"])
        restart_user_manager(ct, ALICE)


def wait_for_files(ct: SystemdContainer, paths: list[str], seconds: float) -> dict[str, str]:
    deadline = time.monotonic() + seconds
    while any(ct.run(["test", "-s", p]).returncode != 0 for p in paths):
        assert time.monotonic() < deadline, (
            f"no output in {paths} after {seconds:.0f} s:\n{ct.journal(None, '-n', '40')}")
        time.sleep(1)
    return {p: ct.read_file(p) for p in paths}


def assert_job_views(views: dict[str, str], inside: str, control: str, via: str) -> None:
    assert views[control].splitlines()[0] == "systemd", views[control]
    assert FOREIGN_SECRET in views[control], f"control ({via}) cannot see it: {views[control]}"
    first, *rest = views[inside].splitlines()
    assert first == "pam_unshare", views[inside]
    assert FOREIGN_SECRET not in views[inside], (
        f"LEAK on the systemd container through {via} via ps: {views[inside]}")
    assert {row.split()[0] for row in rest} <= {ALICE, "root"}, views[inside]


def test_cron_jobs_run_namespaced(sidestep_host: PamHost) -> None:
    """`pam-unshare enable cron`: a crontab entry runs inside; pu_carol's (exempt) is the
    control. Waits for the next minute."""
    ct = sidestep_host.ct
    outputs = {user: f"/tmp/pu-cron-{user}" for user in (ALICE, CAROL)}
    ct.run(["rm", "-f", *outputs.values()], check=True)
    entries = "".join(f"* * * * * {user} ({VIEW}) > {out} 2>&1\n"
                      for user, out in outputs.items())
    ct.write_file("/etc/cron.d/pu-sidestep", entries.encode(), 0o644)
    try:
        views = wait_for_files(ct, list(outputs.values()), 130)
    finally:
        ct.run(["rm", "-f", "/etc/cron.d/pu-sidestep"])
    assert_job_views({u: views[o] for u, o in outputs.items()}, ALICE, CAROL, "cron")


def test_at_jobs_run_namespaced(sidestep_host: PamHost) -> None:
    """`pam-unshare enable atd`: an `at now` job runs inside; pu_carol's is the control."""
    ct = sidestep_host.ct
    outputs = {user: f"/tmp/pu-at-{user}" for user in (ALICE, CAROL)}
    ct.run(["rm", "-f", *outputs.values()], check=True)
    for user, out in outputs.items():
        job = f"echo {shlex.quote(f'({VIEW}) > {out} 2>&1')} | at now"
        result = ct.run(["su", user, "-c", job], timeout=60)
        assert "job" in result.stderr, result
    # From inside a session `at` cannot find atd's PID to wake it (it says "at daemon not
    # running"); root's SIGHUP makes atd scan its queue now instead of at its next wakeup.
    ct.run(["pkill", "-HUP", "-x", "atd"], check=True)
    views = wait_for_files(ct, list(outputs.values()), 120)
    assert_job_views({u: views[o] for u, o in outputs.items()}, ALICE, CAROL, "atd")


# ---- bad input around the D-Bus policy and the bus (issue 13, "Bad input") ---------------------


def assert_logins_work(ct: SystemdContainer) -> None:
    """A namespaced su and sudo login, and root's own view, all as usual."""
    login = ct.run(["su", ALICE, "-c", "cat /proc/1/comm"], timeout=60)
    assert login.returncode == 0 and login.stdout == "pam_unshare\n", login
    ct.run(["rm", "-f", SUDOERS_DROPIN], check=True)
    sudo = ct.run(["sudo", "-u", ALICE, "cat", "/proc/1/comm"], timeout=60)
    assert sudo.returncode == 0 and sudo.stdout == "pam_unshare\n", sudo
    assert ct.run(["su", "root", "-c", "cat /proc/1/comm"]).stdout == "systemd\n"


def test_a_dbus_policy_that_fails_to_load_breaks_no_login(pam_host: PamHost,
                                                           foreign_unit: str) -> None:
    """A broken policy file (truncated by a full disk, an admin's typo): the bus logs one line
    naming it and runs on without it, every login still works, and the channel is open again,
    which is why `pam-unshare status` reports a policy that does not parse
    (tests/unit/test_cli_dbus_policy.py)."""
    ct = pam_host.ct
    good = DBUS_POLICY_SOURCE.read_bytes()
    ct.write_file(DBUS_POLICY_DEST, good[: len(good) // 2], 0o644)
    try:
        ct.run(RELOAD_BUS, check=True)
        deadline = time.monotonic() + 30
        while "pam-unshare.conf" not in ct.journal("dbus.service"):
            assert time.monotonic() < deadline, ct.journal("dbus.service")[-2000:]
            time.sleep(0.2)
        assert "Encountered error" in ct.journal("dbus.service")
        assert_logins_work(ct)
        assert ct.run(["systemctl", "is-active", "dbus.service"]).stdout.strip() == "active"
        leak = ct.run(["su", ALICE, "-c", DBUS_CHANNELS["GetUnitProcesses"]], timeout=60)
        assert FOREIGN_SECRET in leak.stdout, leak.stdout
    finally:
        ct.run(["rm", "-f", DBUS_POLICY_DEST])
        ct.run(RELOAD_BUS, check=True)


def test_without_a_system_bus_logins_still_work(pam_host: PamHost) -> None:
    """The module never talks to the bus: with dbus stopped, su and sudo sessions are namespaced
    as always (pam_systemd, optional in Debian's stacks, logs its own failure) and root logs in."""
    ct = pam_host.ct
    ct.run(["systemctl", "stop", "dbus.socket", "dbus.service"], check=True, timeout=90)
    try:
        assert not ct.run(["test", "-S", "/run/dbus/system_bus_socket"]).returncode == 0 or \
            ct.run(["busctl", "status"], timeout=30).returncode != 0
        assert_logins_work(ct)
    finally:
        ct.run(["systemctl", "start", "dbus.socket", "dbus.service"], check=True, timeout=90)
        deadline = time.monotonic() + 60
        while ct.run(["loginctl", "list-sessions"], timeout=30).returncode != 0:
            assert time.monotonic() < deadline, ct.journal(None, "-n", "40")
            time.sleep(0.5)
