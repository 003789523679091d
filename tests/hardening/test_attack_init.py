"""The session init under resource pressure, and the per-user quota (issue 14, items 6 and 9).

- A joiner the init cannot take (no descriptor left: EMFILE at accept) must not make PID 1 spin;
  it waits and is taken once a descriptor is free.
- A namespace at its join limit answers "full": the joiner's login is refused with one line, and
  no second namespace is started for the same user.
- A lingering init that cannot tell whether the namespace is empty (no pidfd left) stays.
- max_sessions: one user cannot hold more live sessions than the limit, so they cannot exhaust
  user.max_pid_namespaces / max_mnt_namespaces (charged to uid 0) for everyone.

The resource pressure is real: root lowers the init's RLIMIT_NOFILE with prlimit(1).
"""

from __future__ import annotations

import os
import subprocess
import time

from pam_unshare_testsupport import devlog

from hardening.attacker import (
    cpu_seconds,
    inits_of,
    lowest_free_fd,
    prlimit_nofile,
    release,
    su_holding,
    wait_for,
)
from pam_unshare import proc

FULL_LINE = "joining the user's namespace (max_sessions reached) failed for user {user}"
QUOTA_LINE = "counting the user's sessions (max_sessions reached) failed for user {user}"


def module_lines(pam_sandbox, mark: int) -> list[str]:
    return devlog.module_lines(pam_sandbox.syslog.lines(mark))


def su(user: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["su", user, "-c", command], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_a_joiner_without_a_descriptor_does_not_make_the_init_spin(pam_sandbox, users,
                                                                    user_state_dir):
    uid = pam_sandbox.uids[users.alice]
    with pam_sandbox.options("scope=user"):
        held = [su_holding(users.alice)]
        joiner = None
        try:
            init = wait_for(lambda: inits_of(uid), what="alice's namespace")[0].init
            # poll() refuses more descriptors than RLIMIT_NOFILE, and accept4() fails once the
            # lowest free number reaches it: joined sessions fill the gaps until the numbers are
            # contiguous, then the limit sits right above them.
            while lowest_free_fd(init.pid) < len(os.listdir(f"/proc/{init.pid}/fd")):
                held.append(su_holding(users.alice))
            prlimit_nofile(init.pid, lowest_free_fd(init.pid))
            joiner = subprocess.Popen(["su", users.alice, "-c", "cat /proc/1/comm"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, text=True)
            time.sleep(0.5)  # the joiner is queued, accept4 fails with EMFILE
            before = cpu_seconds(init.pid)
            time.sleep(2.0)
            spent = cpu_seconds(init.pid) - before
            assert spent < 0.5, f"PID 1 spun at {spent / 2.0:.0%} CPU with a joiner it cannot take"
            assert joiner.poll() is None, "the joiner was turned away instead of waiting"
            prlimit_nofile(init.pid, 1024)
            out, err = joiner.communicate(timeout=30)
            assert joiner.returncode == 0 and out.strip() == "pam_unshare", (out, err)
            assert [s.init.pid for s in inits_of(uid)] == [init.pid], (
                "the joiner started a second namespace")
        finally:
            if joiner is not None and joiner.poll() is None:
                joiner.kill()
                joiner.wait()
            for process in held:
                release(process)


def test_a_full_namespace_refuses_the_joiner_and_stays_the_only_one(pam_sandbox, users,
                                                                    user_state_dir):
    uid = pam_sandbox.uids[users.alice]
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("scope=user", "max_sessions=2"):
        held = [su_holding(users.alice), su_holding(users.alice)]
        try:
            namespaces = {s.id for s in inits_of(uid)}
            assert len(namespaces) == 1
            third = su(users.alice, "cat /proc/1/comm")
            assert third.returncode != 0 and third.stdout == "", third.stdout
            assert {s.id for s in inits_of(uid)} == namespaces, (
                "a refused joiner took the full namespace for a stale one and started another")
            lines = module_lines(pam_sandbox, mark)
            assert any(FULL_LINE.format(user=users.alice) in line for line in lines), lines
            release(held.pop())
            fourth = su(users.alice, "cat /proc/1/comm")
            assert fourth.stdout.strip() == "pam_unshare", fourth.stderr
        finally:
            for process in held:
                release(process)


def test_max_sessions_bounds_one_users_sessions(pam_sandbox, users, user_state_dir):
    uid = pam_sandbox.uids[users.alice]
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("max_sessions=3", "onerr=succeed"):
        held = [su_holding(users.alice) for _ in range(3)]
        try:
            assert len(inits_of(uid)) == 3
            refused = su(users.alice, "cat /proc/1/comm")
            assert refused.returncode != 0 and refused.stdout == "", (
                f"a fourth session ran: {refused.stdout!r}")
            lines = module_lines(pam_sandbox, mark)
            assert any(QUOTA_LINE.format(user=users.alice) in line for line in lines), lines
            other = su(users.bob, "cat /proc/1/comm")
            assert other.stdout.strip() == "pam_unshare", "another user was refused too"
            release(held.pop())
            wait_for(lambda: len(inits_of(uid)) == 2, what="the released slot")
            again = su(users.alice, "cat /proc/1/comm")
            assert again.stdout.strip() == "pam_unshare", again.stderr
        finally:
            for process in held:
                release(process)


def test_a_lingering_init_without_descriptors_keeps_the_users_job(pam_sandbox, users):
    uid = pam_sandbox.uids[users.alice]
    held = subprocess.Popen(["su", users.alice, "-c", "sleep 300 & echo $!; read _"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout is not None
        job_inside = int(held.stdout.readline())
        session = wait_for(lambda: inits_of(uid), what="alice's session")[0]
        job = next(m.process.pid for m in session.members if m.session_pid == job_inside)
        # Room for /proc itself, none for a pidfd: whether the namespace is empty cannot be told.
        prlimit_nofile(session.pid, lowest_free_fd(session.pid) + 1)
        release(held)
        time.sleep(1.5)
        assert proc.read_process(job) is not None, (
            "PID 1 took a refused pidfd for an exited process, left, and killed the user's job")
        assert proc.read_process(session.pid) is not None
        prlimit_nofile(session.pid, 1024)
        subprocess.run(["kill", str(job)], check=True)
        wait_for(lambda: proc.read_process(session.pid) is None, what="PID 1 to leave")
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
        subprocess.run(["pkill", "-u", str(uid), "-x", "sleep"], check=False)
