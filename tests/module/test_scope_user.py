"""scope=user: every session of a user shares one namespace, found in a way that cannot be
fooled (root-only records, live PID 1 proven through its socket, one namespace for logins that
race)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest
from pam_unshare_testsupport import hostprocs

from pam_unshare.proc import INIT_COMM

STATE_DIR = "/run/pam_unshare"
NS = re.compile(r"pid:\[(\d+)\]")


@pytest.fixture
def user_scope(pam_sandbox) -> Iterator[None]:
    existed = os.path.exists(STATE_DIR)
    with pam_sandbox.options("scope=user"):
        yield
    if not existed:
        shutil.rmtree(STATE_DIR, ignore_errors=True)


@contextmanager
def holding(command: str) -> Iterator[subprocess.Popen]:
    """A session kept open by COMMAND; killed (with its namespace's leftovers) afterwards."""
    process = subprocess.Popen(shlex.split(command), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=60)


def namespaces(output: str) -> List[int]:
    return [int(found) for found in NS.findall(output)]


def wait_for_sleep(tag: str, seconds: str) -> hostprocs.HostProcess:
    found = hostprocs.wait_for(lambda: [
        p for p in hostprocs.tagged(tag) if hostprocs.cmdline(p.pid) == ["sleep", seconds]])
    assert found, f"the session holding sleep {seconds} did not start"
    return found[0]


def kill_tagged(tag: str) -> None:
    for process in hostprocs.tagged(tag):
        hostprocs.kill(process)


def test_ssh_and_su_sessions_of_one_user_share_a_namespace(host, entries, users, user_scope):
    tag = hostprocs.new_tag()
    hold = f"{hostprocs.tag_assignment(tag)} exec sleep"
    ssh = entries["ssh-command"]
    try:
        with holding(ssh.command(users.alice, f"{hold} 301")), \
                holding(ssh.command(users.alice, f"{hold} 302")), \
                holding(entries["su"].command(users.bob, f"{hold} 303")):
            first = wait_for_sleep(tag, "301")
            second = wait_for_sleep(tag, "302")
            bobs = wait_for_sleep(tag, "303")
            assert hostprocs.pid_namespace(first.pid) == hostprocs.pid_namespace(second.pid)
            assert hostprocs.pid_namespace(bobs.pid) != hostprocs.pid_namespace(first.pid)
            result = host.run(entries["su"].command(
                users.alice, "readlink /proc/self/ns/pid; ps -e -o args="))
            assert result.rc == 0, result.stderr
            assert namespaces(result.stdout) == [hostprocs.pid_namespace(first.pid)]
            assert "sleep 301" in result.stdout and "sleep 302" in result.stdout
            assert "sleep 303" not in result.stdout, "alice sees bob's session"
            assert "pu-foreign-job" not in result.stdout
            listed = json.loads(subprocess.run(
                [str(Path(sys.executable).parent / "pam-unshare"), "sessions", "--json"],
                capture_output=True, text=True, check=True).stdout)
            shared = [entry for entry in listed
                      if entry["id"] == hostprocs.pid_namespace(first.pid)]
            assert len(shared) == 1 and shared[0]["scope"] == "user", listed
            assert [login["service"] for login in shared[0]["logins"]] == ["sshd", "sshd"], (
                "pam-unshare sessions should show both ssh logins sharing the namespace")
    finally:
        kill_tagged(tag)


def test_fifty_logins_at_once_end_in_one_namespace(host, entries, users, user_scope):
    login = entries["su"].command(users.alice, "readlink /proc/self/ns/pid; sleep 2")
    result = host.run(f"for i in $(seq 50); do {login} & done; wait")
    found = namespaces(result.stdout)
    assert len(found) == 50, result.stdout + result.stderr
    assert len(set(found)) == 1, f"{len(set(found))} namespaces for one user"
    assert found[0] != hostprocs.pid_namespace(os.getpid())


def test_a_killed_pid1_makes_the_next_login_start_afresh(host, entries, users, user_scope):
    tag = hostprocs.new_tag()
    try:
        with holding(entries["su"].command(
                users.alice, f"{hostprocs.tag_assignment(tag)} exec sleep 304")):
            sleeper = wait_for_sleep(tag, "304")
            dead = hostprocs.pid_namespace(sleeper.pid)
            init = hostprocs.namespace_init(dead)
            assert init is not None and init.comm == INIT_COMM
            hostprocs.kill(init)
            hostprocs.wait_for(lambda: not hostprocs.is_present(init))
            result = host.run(entries["su"].command(
                users.alice, "readlink /proc/self/ns/pid; cat /proc/1/comm"))
            assert result.rc == 0, result.stderr
            assert "pam_unshare" in result.stdout
            fresh = namespaces(result.stdout)
            assert fresh and fresh[0] not in (dead, hostprocs.pid_namespace(os.getpid()))
    finally:
        kill_tagged(tag)


def test_clearing_run_forgets_the_records(host, entries, users, user_scope):
    """A reboot empties /run: what lived before must not be found by what comes after."""
    tag = hostprocs.new_tag()
    try:
        with holding(entries["su"].command(
                users.alice, f"{hostprocs.tag_assignment(tag)} exec sleep 305")):
            before = hostprocs.pid_namespace(wait_for_sleep(tag, "305").pid)
            shutil.rmtree(STATE_DIR)
            result = host.run(entries["su"].command(users.alice, "readlink /proc/self/ns/pid"))
            assert result.rc == 0, result.stderr
            after = namespaces(result.stdout)
            assert after and after[0] not in (before, hostprocs.pid_namespace(os.getpid()))
    finally:
        kill_tagged(tag)


def test_a_state_directory_others_can_write_is_refused(host, entries, users, pam_sandbox,
                                                       user_scope):
    """Whoever could plant a socket there could hand out namespaces: fail closed."""
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    os.chmod(STATE_DIR, 0o777)
    try:
        mark = pam_sandbox.syslog.mark()
        result = host.run(entries["su"].command(users.alice, "echo ran"))
        assert result.rc != 0 and "ran" not in result.stdout
        assert any("is root-only failed" in line for line in pam_sandbox.syslog.lines(mark))
    finally:
        os.chmod(STATE_DIR, 0o700)
    assert stat.S_IMODE(os.stat(STATE_DIR).st_mode) == 0o700


def test_kill_at_logout_waits_for_the_users_last_session(host, entries, users, pam_sandbox,
                                                         user_scope):
    tag = hostprocs.new_tag()
    with pam_sandbox.options("scope=user", "on_logout=kill"):
        try:
            with holding(entries["su"].command(
                    users.alice, f"{hostprocs.tag_assignment(tag)} exec sleep 306")) as first:
                sleeper = wait_for_sleep(tag, "306")
                namespace = hostprocs.pid_namespace(sleeper.pid)
                known_at = hostprocs.now_ticks()
                result = host.run(entries["su"].command(
                    users.alice, f"{hostprocs.tag_assignment(tag)} nohup sleep 307 "
                                 ">/dev/null 2>&1 &"))
                assert result.rc == 0, result.stderr
                orphan = wait_for_sleep(tag, "307")
                # One session closed: the other session's process and the job both remain.
                assert hostprocs.is_present(sleeper) and hostprocs.is_present(orphan)
                hostprocs.kill(sleeper)  # the last session ends
                first.wait(timeout=60)
                left = hostprocs.wait_until_none(
                    lambda: hostprocs.in_namespace(namespace, started_by=known_at))
                assert left == [], f"the user's last logout left {left}"
        finally:
            kill_tagged(tag)
