"""A hostile user inside a session, and logins cut off at every point of the handshake.

Inside the session the user forks up to RLIMIT_NPROC, kills everything they can, signals PID 1
with every signal and tries to ptrace it; each time the session ends cleanly, PID 1 stays in
charge until then, nothing is left afterwards, and the host (its processes, other users' logins,
the user's own processes outside the session) is unaffected.

Then the handshake: the caller (su, sudo, sshd) or the init-to-be dies at each call of the
module's handshake (the fault shim's KILL action), a scope=user joiner dies at each step of the
join, and the ssh client hangs up at staggered moments of the login. The session never runs half
made and nothing is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid
from typing import Iterator, List

import pytest
from conftest import require_tools
from pam_unshare_testsupport import hostprocs

from hardening.conftest import FULL, figure
from hardening.faults import (
    F_ADD_SEALS,
    INIT_PROBE,
    PR_CAP_AMBIENT,
    PR_CAPBSET_DROP,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_SECUREBITS,
    RLIMIT_NOFILE,
    SessionInit,
    inits_in_output,
    inits_of,
    mount_table,
    run,
    session_probe,
    wait_no_leftovers,
)

NPROC = 1000 if FULL else 200
HANGUP_ROUNDS = 60 if FULL else 15

# A fork bomb with a brake: every process forks until fork fails (RLIMIT_NPROC) 20 times in a
# row, then sleeps. It runs with its output on /dev/null: its processes must not hold the
# caller's pipes.
FORK_BOMB = r"""
import os, time
failures = 0
for _ in range(200000):
    try:
        pid = os.fork()
    except BlockingIOError:
        failures += 1
        if failures > 20:
            break
        continue
    if pid == 0:
        failures = 0
time.sleep(300)
"""

SIGNAL_PID1 = r"""
import errno, os, signal
results = {}
for sig in range(1, signal.SIGRTMAX + 1):
    try:
        os.kill(1, sig)
        results[sig] = "sent"
    except OSError as error:
        results[sig] = errno.errorcode[error.errno]
print("signals:" + ",".join(sorted(set(results.values()))))
"""

PTRACE_PID1 = r"""
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
out = []
for name, request in (("attach", 16), ("seize", 0x4206)):
    rc = libc.ptrace(request, 1, None, None)
    out.append(f"{name}={'ok' if rc == 0 else errno.errorcode[ctypes.get_errno()]}")
for path in ("/proc/1/mem", "/proc/1/environ", "/proc/1/maps"):
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        out.append(f"{path}=read")
    except OSError as error:
        out.append(f"{path}={errno.errorcode[error.errno]}")
print("ptrace:" + " ".join(out))
"""


def python_in_session(code: str) -> str:
    return f"python3 -c {shlex.quote(code)}"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> Iterator[None]:
    require_tools("python3", "timeout")
    yield


def su_session(user: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["su", user, "-c", f"{INIT_PROBE}; {command}"], timeout=timeout)


def one_init(result: subprocess.CompletedProcess) -> SessionInit:
    found = inits_in_output(result.stdout)
    assert len(found) == 1, f"rc={result.returncode} {result.stdout} {result.stderr}"
    return found[0]


def processes_of(uid: int) -> List[hostprocs.HostProcess]:
    found = []
    for process in hostprocs.processes():
        try:
            if os.stat(f"/proc/{process.pid}").st_uid == uid and not process.exited:
                found.append(process)
        except OSError:
            pass
    return found


@pytest.fixture
def bystander(pam_sandbox, users) -> Iterator[hostprocs.HostProcess]:
    """A process of the same user on the host, outside any session: the user's kill -1 and fork
    bomb inside the session must not reach it."""
    uid = pam_sandbox.uids[users.alice]
    tag = hostprocs.new_tag()
    process = subprocess.Popen(["sleep", "600"], user=uid, group=uid, extra_groups=[],
                               env={"PATH": "/usr/bin:/bin", hostprocs.TAG_VARIABLE: tag},
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               start_new_session=True)
    found = hostprocs.wait_for(lambda: hostprocs.tagged(tag))
    assert found
    try:
        yield found[0]
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("mode", ["kill", "linger"])
def test_a_fork_bomb_stops_at_rlimit_nproc_and_the_session_ends_cleanly(
        pam_sandbox, users, bystander, mode):
    uid = pam_sandbox.uids[users.alice]
    mounts_before = mount_table()
    options = ("on_logout=kill",) if mode == "kill" else ()
    with pam_sandbox.options(*options):
        session = subprocess.Popen(
            ["timeout", "-k", "5", "300", "su", users.alice, "-c",
             f"{INIT_PROBE}; ulimit -u {NPROC}; {python_in_session(FORK_BOMB)} >/dev/null 2>&1 & "
             "sleep 6; echo shell:done"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # While the bomb runs: the user is capped, others still log in and fork.
            peak = hostprocs.wait_for(lambda: len(processes_of(uid)) >= NPROC - 5, timeout=60)
            assert peak, "the bomb never reached the limit"
            assert len(processes_of(uid)) <= NPROC + 2, "RLIMIT_NPROC did not hold"
            other = su_session(users.bob, "echo bob:ok")
            assert other.returncode == 0 and "bob:ok" in other.stdout, other.stderr
            stdout, stderr = session.communicate(timeout=120)
        finally:
            if session.poll() is None:
                session.kill()
                session.wait()
    init = one_init(subprocess.CompletedProcess([], 0, stdout, stderr))
    assert "shell:done" in stdout, stderr
    assert hostprocs.refresh(bystander) is not None, "the bomb reached the user's host process"
    figure(f"hostile fork bomb ({mode})", f"capped at RLIMIT_NPROC={NPROC}")
    if mode == "linger":
        # Documented: with linger the user's processes outlive the login (like nohup jobs);
        # PID 1 leaves when they are gone. An administrator kills them from the host.
        assert hostprocs.in_namespace(init.pidns), "linger: the bomb should still be running"
        for process in hostprocs.in_namespace(init.pidns):
            if not process.is_namespace_init:
                hostprocs.kill(process)
    assert wait_no_leftovers([init], timeout=60) == []
    assert mount_table() == mounts_before


def test_kill_minus_one_inside_reaches_only_the_session(pam_sandbox, users, bystander):
    # kill(-1) spares the caller itself: the shell lives on, and `wait` returns only once both
    # jobs are dead (or the 120 s limit strikes).
    started = time.monotonic()
    result = su_session(users.alice, "sleep 300 & sleep 300 & kill -9 -1; wait; echo survived")
    init = one_init(result)
    assert result.returncode == 0 and "survived" in result.stdout, result
    assert time.monotonic() - started < 60
    assert hostprocs.refresh(bystander) is not None, "kill -1 reached the user's host process"
    assert wait_no_leftovers([init], timeout=30) == []


def test_pid_1_ignores_every_signal_from_the_user_and_cannot_be_traced(pam_sandbox, users):
    result = su_session(
        users.alice,
        f"{python_in_session(SIGNAL_PID1)}; {python_in_session(PTRACE_PID1)}; "
        "echo after:$(cat /proc/1/comm)")
    init = one_init(result)
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "signals:EPERM\n" in output, output
    assert "ptrace:attach=EPERM seize=EPERM /proc/1/mem=EACCES /proc/1/environ=EACCES " \
           "/proc/1/maps=EACCES" in output, output
    assert "after:pam_unshare\n" in output, output
    assert wait_no_leftovers([init], timeout=30) == []


def test_the_user_exiting_at_once_ends_the_session(pam_sandbox, users, entries):
    """Sessions whose shell exits at once, or kills its own shell, through every entry."""
    inits = []
    for name in ("su", "sudo-nopty", "ssh-command", "python-pam"):
        for command in ("exit 0", "kill -9 $$"):
            started = time.monotonic()
            result = run(entries[name].argv(users.alice, f"{INIT_PROBE}; {command}"),
                         timeout=60)
            assert time.monotonic() - started < 30, f"{name} hung: {result}"
            inits.extend(inits_in_output(result.stdout.replace("\r", "")))
    assert len(inits) == 8
    assert wait_no_leftovers(inits, timeout=30) == []


# ---- the handshake, cut at every point ----------------------------------------------------------

CALLER_DEATHS = [
    ("pipe2:1", "before the lifeline exists"),
    ("pipe2:2", "between the two pipes"),
    ("clone:1", "before the clone"),
    ("poll:1", "waiting for ready (the init-to-be runs)"),
    ("read@caller:1", "reading ready (the init runs)"),
    ("setns:1", "before joining"),
    ("chdir@caller:1", "right after joining"),
]
CHILD_DEATHS = [
    "setresgid:1", f"setrlimit={RLIMIT_NOFILE}:1", "close_range:1", "mount:1", "mount:2",
    "memfd_create:1", "write:1", f"fcntl={F_ADD_SEALS}:1", "chdir:1", "dup3:1", "setgroups:1",
    f"prctl={PR_SET_SECUREBITS}:1", f"prctl={PR_CAPBSET_DROP}:1", f"prctl={PR_CAP_AMBIENT}:1",
    f"prctl={PR_SET_NO_NEW_PRIVS}:1", "execveat:1",
]
DEATHS = [point for point, _ in CALLER_DEATHS] + CHILD_DEATHS
cut_points: List[str] = []


@pytest.mark.parametrize("caller", ["su", "sudo", "sshd"])
@pytest.mark.parametrize("point", DEATHS)
def test_a_death_at_any_point_of_the_handshake_leaves_nothing(pam_sandbox, users, fault_dir,
                                                              fault_callers, marker_dir, point,
                                                              caller):
    marker = marker_dir / f"death-{uuid.uuid4().hex}"
    mounts_before = mount_table()
    fault_dir.arm(f"{point}:KILL")
    since = pam_sandbox.syslog.mark()
    result = run(fault_callers[caller](users.alice, session_probe(marker)))
    # sshd's monitor dies after the client may already have gone: wait for the shim's record.
    hostprocs.wait_for(lambda: fault_dir.injected(), timeout=10)
    injected, clones, log = fault_dir.injected(), fault_dir.clones(), fault_dir.log()
    fault_dir.arm("")
    context = f"{point} under {caller}: rc={result.returncode} {result.stdout!r} " \
              f"{result.stderr!r} shim={log}"
    assert injected == [point.rsplit(":", 1)[0].split("@")[0]], context
    cut_points.append(point)
    assert result.returncode != 0, context
    assert result.returncode not in (124, 125), f"the caller's client hung: {context}"
    assert not marker.exists(), f"the command ran after a death in the handshake: {context}"
    assert wait_no_leftovers(inits_of(clones), timeout=15) == [], context
    assert mount_table() == mounts_before
    if point in CHILD_DEATHS:
        # The caller survived the death of its init-to-be and said what happened.
        lines = [line for line in pam_sandbox.syslog.lines(since, settle=0.2)
                 if "pam_unshare(" in line]
        assert len(lines) == 1 and "it exited before it was ready" in lines[0], \
            f"{context} {lines}"


JOIN_DEATHS = ["connect:1", "poll:1", "read:1", "getsockopt:1", "pidfd_open:1", "poll:2",
               "setns:1", "chdir:1"]


@pytest.mark.parametrize("point", JOIN_DEATHS)
def test_a_joiner_dying_mid_join_leaves_the_users_namespace_intact(pam_sandbox, users,
                                                                   fault_dir, fault_callers,
                                                                   user_state_dir, point):
    tag = hostprocs.new_tag()
    with pam_sandbox.options("scope=user"):
        holder = run(["su", users.alice, "-c", f"{hostprocs.tag_assignment(tag)} nohup sleep "
                      f"120 >/dev/null 2>&1 & {INIT_PROBE}"])
        init = one_init(holder)
        try:
            fault_dir.arm(f"{point}:KILL")
            result = run(fault_callers["su"](users.alice, "echo joined"))
            injected = fault_dir.injected()
            fault_dir.arm("")
            assert injected == [point.rsplit(":", 1)[0]], (point, result, fault_dir.log())
            cut_points.append(f"join {point}")
            assert result.returncode != 0 and "joined" not in result.stdout
            # The namespace is still there and still takes sessions.
            again = run(["su", users.alice, "-c", INIT_PROBE])
            assert one_init(again) == init, "a dead joiner cost the user their namespace"
        finally:
            for process in hostprocs.tagged(tag):
                hostprocs.kill(process)
        assert wait_no_leftovers([init], timeout=30) == []


def test_ssh_clients_hanging_up_during_login_leave_nothing(pam_sandbox, users, fault_dir,
                                                           fault_sshd):
    """The user cuts the connection at staggered moments of the login; the shim (no fault
    armed) records every namespace the module made meanwhile."""
    fault_dir.arm("")
    mounts_before = mount_table()
    command = fault_sshd.command(users.alice, f"{INIT_PROBE}; sleep 2")
    delays = [0.05 + 0.6 * i / HANGUP_ROUNDS for i in range(HANGUP_ROUNDS)]
    for delay in delays:
        client = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(delay)
        client.send_signal(signal.SIGKILL)
        client.wait()
    time.sleep(1)
    clones = fault_dir.clones()
    figure("hostile ssh hang-ups", f"{len(delays)} cut logins, {len(clones)} namespaces made")
    assert wait_no_leftovers(inits_of(clones), timeout=60) == []
    assert mount_table() == mounts_before


def test_zz_report_cut_points() -> None:
    figure("handshake cut points (runs)", len(cut_points))
