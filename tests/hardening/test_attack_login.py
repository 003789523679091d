"""Attacks by an ordinary local user on the module through their own logins (issue 14, items 2,
3, 4, 5 and 8): their rlimits, their working directory, group names that do not resolve, their
real uid on the session init, and long NSS entries. Each runs through real su or sudo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Sequence

import pytest
from conftest import require_tools

from hardening.attacker import (
    as_user,
    fuse_for_users,
    init_of_user,
    module_lines_since,
    release,
    run_as,
    su_for_users,
    sudo_rule,
    wait_for,
)
from pam_unshare import proc

PID1_COMM = "cat /proc/1/comm"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_tools("setpriv", "su", "sudo", "prlimit")


# ---- item 2: a user-chosen rlimit must never decide whether isolation happens -------------------

# Without CAP_SYS_RESOURCE (this machine's bounding set lacks it, as do many containers) root
# cannot raise a hard limit the user lowered: then the session is refused, whatever onerr says.
# With it, the init sets its own limits and the session is namespaced. Never is it un-namespaced.
USERS_OWN_LIMITS = "refusing the session (a user can cause this: onerr does not apply)"


@pytest.mark.parametrize("limit", ["-n 13", "-n 10", "-n 16", "-n 20", "-f 0", "-f 1"])
def test_a_users_rlimit_does_not_leave_the_session_un_namespaced(pam_sandbox, users, limit):
    uid = pam_sandbox.uids[users.alice]
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
        result = run_as(uid, f"ulimit {limit}; su {users.alice} -c {shlex.quote(PID1_COMM)}")
    errors = module_lines_since(pam_sandbox, mark)
    if result.stdout.strip() == "pam_unshare":
        assert result.returncode == 0 and errors == [], errors
        return
    assert result.returncode != 0 and result.stdout == "", (
        f"ulimit {limit}: the session ran without a namespace: {result.stdout!r} "
        f"{result.stderr!r} {errors}")
    assert len(errors) == 1 and USERS_OWN_LIMITS in errors[0], errors


def test_limits_that_leave_room_are_namespaced_here(pam_sandbox, users):
    """The refusal above is no blanket one: limits the module can work within are namespaced
    even where root cannot raise them."""
    uid = pam_sandbox.uids[users.alice]
    with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
        result = run_as(uid, f"ulimit -n 20; ulimit -f 100; su {users.alice} -c "
                             f"{shlex.quote(PID1_COMM)}")
    assert result.stdout.strip() == "pam_unshare", result.stderr


def _login_under_address_space_limit(uid: int, user: str, kib: int) -> str:
    result = run_as(uid, f"ulimit -v {kib}; su {user} -c {shlex.quote(PID1_COMM)}")
    comm = result.stdout.strip()
    if result.returncode != 0 or not comm:
        return "failed"
    return "namespaced" if comm == proc.INIT_COMM else "outside"


def test_a_users_address_space_limit_does_not_leave_the_session_un_namespaced(pam_sandbox,
                                                                              users):
    """`ulimit -v` before su is the user's: between the limit where su cannot start at all and
    the one where the session is namespaced, the module's own mapping (the clone child's stack)
    fails. There the session must be refused, whatever onerr says, never run outside."""
    uid = pam_sandbox.uids[users.alice]
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
        low, high = 1024, 1 << 21  # KiB: su cannot run / surely enough
        assert _login_under_address_space_limit(uid, users.alice, high) == "namespaced"
        while high - low > 4:
            middle = (low + high) // 2
            if _login_under_address_space_limit(uid, users.alice, middle) == "namespaced":
                high = middle
            else:
                low = middle
        # The stack the module maps is about 100 KiB: its failures lie just below the threshold.
        outcomes = {kib: _login_under_address_space_limit(uid, users.alice, kib)
                    for kib in range(high - 256, high + 16, 8)}
    refusals = [line for line in module_lines_since(pam_sandbox, mark)
                if "mapping the stack of the clone child (the user's limits)" in line]
    assert [kib for kib, outcome in outcomes.items() if outcome == "outside"] == [], outcomes
    assert refusals, f"no limit in the sweep hit the module's mapping (threshold {high} KiB)"


# ---- item 3: the working directory race --------------------------------------------------------

RENAME_EXCHANGE = 2

RACER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
end = time.monotonic() + float(sys.argv[1])
swaps = 0
while time.monotonic() < end:
    if libc.renameat2(-100, b"d", -100, b"s", 2) == 0:
        swaps += 1
print(swaps)
"""


@pytest.fixture
def race_arena(pam_sandbox, users) -> Iterator[Path]:
    """pu_alice's directory with a subdirectory d and a symlink s to a world-readable directory
    inside pu_bob's 0700 home, which alice cannot reach."""
    alice, bob = pam_sandbox.uids[users.alice], pam_sandbox.uids[users.bob]
    root = Path(tempfile.mkdtemp(prefix="pu-cwd-race-"))
    os.chmod(root, 0o755)
    home = root / "bob-home"
    inner = home / "inner"
    inner.mkdir(parents=True)
    (inner / "secret").write_text("bob-secret\n")
    os.chmod(inner / "secret", 0o644)
    os.chmod(inner, 0o755)
    os.chmod(home, 0o700)
    for path in (home, inner, inner / "secret"):
        os.chown(path, bob, bob)
    arena = root / "arena"
    (arena / "d").mkdir(parents=True)
    (arena / "s").symlink_to(inner)
    for path in (arena, arena / "d"):
        os.chown(path, alice, alice)
    os.lchown(arena / "s", alice, alice)
    try:
        yield arena
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_a_swapped_working_directory_never_leads_into_another_users_home(
        pam_sandbox, users, race_arena):
    uid = pam_sandbox.uids[users.alice]
    rounds = 150
    assert run_as(uid, f"cat {race_arena.parent}/bob-home/inner/secret").returncode != 0
    logins = (f"cd {race_arena}/d && for i in $(seq {rounds}); do "
              f"su {users.alice} -c 'cat secret 2>/dev/null; true'; done")
    with su_for_users(pam_sandbox):
        racer = subprocess.Popen(as_user(uid, f"cd {race_arena} && exec python3 -c "
                                              f"{shlex.quote(RACER)} 600"),
                                 stdout=subprocess.PIPE, text=True)
        try:
            result = run_as(uid, logins, timeout=600)
        finally:
            racer.send_signal(signal.SIGKILL)
            racer.wait()
    leaked = result.stdout.count("bob-secret")
    assert result.returncode == 0, result.stderr
    assert leaked == 0, f"{leaked} of {rounds} su sessions started inside pu_bob's 0700 home"


def test_the_working_directory_is_kept_when_nobody_swaps_it(pam_sandbox, users, race_arena):
    uid = pam_sandbox.uids[users.alice]
    with su_for_users(pam_sandbox):
        result = run_as(uid, f"cd {race_arena}/d && su {users.alice} -c pwd")
    assert result.stdout.strip() == f"{race_arena}/d", result.stderr


# ---- item 4: an unresolvable group in only_groups ------------------------------------------------

def test_an_unknown_only_group_refuses_the_session_under_onerr_fail(pam_sandbox, users):
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("only_groups=pu_no_such_group"):
        result = subprocess.run(["su", users.alice, "-c", PID1_COMM], capture_output=True,
                                text=True, timeout=60)
    assert result.returncode != 0 and "pam_unshare" not in result.stdout, (
        f"an unresolvable only_groups exempted the user: {result.stdout!r}")
    errors = module_lines_since(pam_sandbox, mark)
    assert any("looking up a group named in only_groups (no such group) failed for user "
               f"{users.alice}: No such file or directory; refusing the session" in line
               for line in errors), errors


def test_an_unknown_only_group_is_logged_under_onerr_succeed(pam_sandbox, users):
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options("only_groups=pu_no_such_group", "onerr=succeed"):
        result = subprocess.run(["su", users.alice, "-c", PID1_COMM], capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 0
    errors = module_lines_since(pam_sandbox, mark)
    assert any("only_groups (no such group)" in line and "onerr=succeed" in line
               for line in errors), errors


def test_an_unknown_exempt_group_exempts_nobody(pam_sandbox, users):
    with pam_sandbox.options("exempt_groups=pu_no_such_group"):
        result = subprocess.run(["su", users.alice, "-c", PID1_COMM], capture_output=True,
                                text=True, timeout=60)
    assert result.stdout.strip() == "pam_unshare", result.stderr


def test_a_known_only_group_still_selects(pam_sandbox, users):
    with pam_sandbox.options(f"only_groups={users.only_group}"):
        member = subprocess.run(["su", users.dave, "-c", PID1_COMM], capture_output=True,
                                text=True, timeout=60)
        other = subprocess.run(["su", users.alice, "-c", PID1_COMM], capture_output=True,
                               text=True, timeout=60)
    assert member.stdout.strip() == "pam_unshare"
    assert other.returncode == 0 and other.stdout.strip() != "pam_unshare"


# ---- item 5: the session init's real uid ---------------------------------------------------

@pytest.mark.parametrize("caller", ["sudo", "su"])
def test_the_calling_user_cannot_signal_the_session_init(pam_sandbox, users, caller):
    alice, bob = pam_sandbox.uids[users.alice], pam_sandbox.uids[users.bob]
    login = (f"sudo -u {users.bob} -- sh -c 'echo READY; read _'" if caller == "sudo"
             else f"su {users.bob} -c 'echo READY; read _'")
    with sudo_rule(f"{users.alice} ALL=({users.bob}) NOPASSWD: ALL"), \
            su_for_users(pam_sandbox):
        held = subprocess.Popen(as_user(alice, login), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        init = None
        try:
            assert held.stdout is not None
            assert held.stdout.readline().strip() == "READY", held.stderr
            init = wait_for(lambda: init_of_user(bob), what="bob's session")
            attempt = run_as(alice, f"kill -STOP {init.pid}; echo rc=$?")
            stat = proc.read_stat(init.pid)
            state = stat.state if stat is not None else "gone"
            assert "rc=1" in attempt.stdout and state != "T", (
                f"{users.alice} stopped the init of the session she opened through {caller}: "
                f"{attempt.stdout!r} {attempt.stderr!r}, state {state}")
            assert init.uids == (0, 0, 0, 0), f"the init runs with uids {init.uids}"
            assert init.is_session_init
        finally:
            if init is not None:
                os.kill(init.pid, signal.SIGCONT)
            release(held)


# ---- item 8: long NSS entries --------------------------------------------------------------------

@pytest.fixture
def long_entry_user(pam_sandbox) -> Iterator[str]:
    """A user whose passwd line (a long GECOS, as directories hand out) does not fit 4 KiB."""
    name, uid = "pu_long", 62050
    home = pam_sandbox.sandbox.add_user(name, uid)
    text = Path("/etc/passwd").read_text()
    line = next(line for line in text.splitlines() if line.startswith(f"{name}:"))
    fields = line.split(":")
    fields[4] = "x" * 6000
    Path("/etc/passwd").write_text(text.replace(line, ":".join(fields)))
    try:
        yield name
    finally:
        kept = [line for line in Path("/etc/passwd").read_text().splitlines(keepends=True)
                if not line.startswith(f"{name}:")]
        Path("/etc/passwd").write_text("".join(kept))
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.mark.parametrize("options", [("scope=user",), ("exempt_groups=pu_exempt",), ()])
def test_a_long_passwd_entry_is_namespaced_not_refused(pam_sandbox, long_entry_user,
                                                       user_state_dir, options):
    mark = pam_sandbox.syslog.mark()
    with pam_sandbox.options(*options):
        result = subprocess.run(["su", long_entry_user, "-c", PID1_COMM], capture_output=True,
                                text=True, timeout=60)
    assert result.stdout.strip() == "pam_unshare", (
        f"{options}: {result.stdout!r} {result.stderr!r} "
        f"{module_lines_since(pam_sandbox, mark)}")


# ---- the init-to-be, before it takes uid 0 -------------------------------------------------------

KILLER = Path(__file__).resolve().parent / "kill_init_to_be.py"


def test_the_user_cannot_kill_the_init_to_be_into_a_session_without_namespace(pam_sandbox,
                                                                               users):
    """su runs setuid from the user's shell, so its real uid is the user's, and a child born
    with it may be signalled by the user until it takes uid 0. Killed there, the init-to-be
    is a failure that onerr=succeed turns into a session without a namespace: the user's choice
    deciding isolation. Here the user kills every child of su until one of them is the
    session's init, in 150 logins, with the CPUs kept busy so that the child waits to run; the
    child must be out of reach."""
    uid = pam_sandbox.uids[users.alice]
    with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
        result = run_as(uid, f"python3 -P {shlex.quote(str(KILLER))} "
                             f"150 {users.alice} {proc.INIT_COMM}", timeout=600)
        # How many logins the spray lets through depends on the machine's load (killing su's
        # own child before it takes the user's ids fails a login, module or not); that the
        # module still namespaces a login is shown by one without the spray.
        calm = run_as(uid, f"su {users.alice} -c {shlex.quote(PID1_COMM)}", timeout=60)
    assert result.returncode == 0, result.stderr
    tally = json.loads(result.stdout.splitlines()[-1])
    print(tally)
    assert tally["windows"] > 0, f"the attack never saw an init-to-be: {tally}"
    assert tally["outside"] == 0, f"sessions ran without a namespace: {tally}"
    assert tally["namespaced"] + tally["refused"] == 150, tally
    assert calm.stdout.strip() == proc.INIT_COMM, (calm.stdout, calm.stderr)


# ---- the caller's cgroup, and the caller's descriptors ---------------------------------------

PIDS = Path("/sys/fs/cgroup/pids")
MEMORY = Path("/sys/fs/cgroup/memory")
SQUEEZE = Path(__file__).resolve().parent / "memcg_squeeze.py"


def own_cgroup(hierarchy: Path) -> Path:
    """This process's cgroup in the v1 HIERARCHY (its controller's directory)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if hierarchy.name in controllers.split(","):
            return hierarchy / path.lstrip("/")
    raise AssertionError(f"no {hierarchy.name} cgroup (v1) in /proc/self/cgroup")


@contextlib.contextmanager
def delegated_cgroup(hierarchy: Path, uid: int, files: Sequence[str],
                     release: Callable[[Path], None] = lambda group: None) -> Iterator[Path]:
    """A cgroup below ours whose FILES (beyond cgroup.procs and tasks) belong to UID: what
    systemd's delegation gives a user (user@UID.service and what their manager starts: a desktop
    terminal, systemd-run --user), done by hand on cgroup v1. RELEASE(group) lets the processes
    left in it go on before they are moved back and the group removed."""
    assert hierarchy.is_dir(), f"the {hierarchy.name} controller (cgroup v1) is not mounted here"
    parent = own_cgroup(hierarchy)
    group = parent / f"pu-attack-{os.getpid()}"
    group.mkdir()
    try:
        for name in ("cgroup.procs", "tasks", *files):
            os.chown(group / name, uid, uid)
        yield group
    finally:
        release(group)
        for _ in range(100):
            pids = (group / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError), open(parent / "cgroup.procs", "w") as back:
                    back.write(pid)
            time.sleep(0.1)
        group.rmdir()


def su_loop_from(group: Path, user: str, count: int) -> str:
    """Shell: COUNT logins of USER through su, each started from inside GROUP."""
    return (f"for i in $(seq {count}); do timeout -s KILL 20 sh -c "
            f"'echo $$ > {group}/cgroup.procs; exec su {user} -c \"cat /proc/1/comm\"' "
            f"2>/dev/null; done 2>/dev/null")


def assert_refused_never_outside(stdout: str, lines: List[str], logged: str) -> None:
    """No login ran outside a namespace, nor was let go to (su may die before it runs the
    command); the module met the failure (a line containing LOGGED) and refused it whatever
    onerr says."""
    outside = [line for line in stdout.splitlines() if line != proc.INIT_COMM]
    assert outside == [], (stdout, lines)
    let_go = [line for line in lines if "session continues without a namespace" in line]
    assert let_go == [], let_go
    refused = [line for line in lines if logged in line]
    assert refused, f"the limit never reached the module: {lines}"
    assert all("onerr does not apply" in line for line in refused), refused


def test_a_pids_limit_of_the_callers_cgroup_refuses_the_session(pam_sandbox, users):
    """Where systemd delegates the pids controller, the user sets pids.max in their cgroup and
    runs su: the module's clone fails (EAGAIN). Before: a plain failure, which onerr=succeed
    turned into a session without a namespace (4 of 30 logins)."""
    require_tools("sh", "timeout")
    uid = pam_sandbox.uids[users.alice]
    with delegated_cgroup(PIDS, uid, ("pids.max",)) as group:
        mark = pam_sandbox.syslog.mark()
        with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
            script = (f"( while :; do echo 1 > {group}/pids.max; echo max > {group}/pids.max; "
                      f"done ) & toggler=$!; {su_loop_from(group, users.alice, 30)}; "
                      f"kill $toggler")
            result = run_as(uid, script)
        lines = module_lines_since(pam_sandbox, mark)
    assert_refused_never_outside(result.stdout, lines, "creating the PID and mount namespaces")


def lift_memory_limit(group: Path) -> None:
    (group / "memory.limit_in_bytes").write_text("-1\n")  # wakes what waits for memory


def test_a_memory_limit_of_the_callers_cgroup_refuses_the_session(pam_sandbox, users):
    """The memory controller delegated as the pids one above: the user holds their cgroup at
    the memory it uses (memcg_squeeze.py) with the OOM killer off, so that the kernel's
    allocations for the new namespaces fail with ENOMEM, and runs su 150 times. Before: a plain
    failure, which onerr=succeed turned into a session without a namespace (the host's PID 1
    read from a session in the first run). Every resource that runs out (ENOMEM, EAGAIN, EMFILE,
    ...) is refused whatever onerr says. (su itself dies of SIGSEGV now and then under this
    squeeze, with or without the module: those logins end, and count for nothing here.)"""
    require_tools("sh", "timeout")
    uid = pam_sandbox.uids[users.alice]
    with delegated_cgroup(MEMORY, uid, ("memory.limit_in_bytes", "memory.oom_control"),
                          release=lift_memory_limit) as group:
        mark = pam_sandbox.syslog.mark()
        with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
            script = (f"python3 -P {shlex.quote(str(SQUEEZE))} {group} & squeeze=$!; "
                      f"{su_loop_from(group, users.alice, 150)}; kill $squeeze")
            result = run_as(uid, script, timeout=1800)
        lines = module_lines_since(pam_sandbox, mark)
    assert_refused_never_outside(result.stdout, lines, "Cannot allocate memory")


def test_a_users_fuse_file_as_sus_stdin_cannot_hold_the_login(pam_sandbox, users):
    """The user opens su's stdin on a file of their own FUSE mount and stops its daemon: whoever
    closes that file waits for the daemon (FLUSH), uninterruptibly; su itself will, at its exit.
    The clone child, while su is suspended, must not close it: it starts again unsuspended, where
    su's timeouts apply, and the module refuses the login within them, with su the user's again
    (its real uid back, for the user to signal). Before: the suspended child closed it and
    blocked, su stayed in the clone for as long as the daemon stayed stopped, with real uid 0,
    and the module never got to say anything."""
    uid = pam_sandbox.uids[users.alice]
    arena = Path(tempfile.mkdtemp(prefix="pu-attack-flush-"))
    os.chmod(arena, 0o755)
    source, point = arena / "source", arena / "point"
    for directory in (source, point):
        directory.mkdir()
        os.chown(directory, uid, uid)
    (source / "f").write_text("x\n")
    os.chown(source / "f", uid, uid)
    with fuse_for_users():
        mounted = run_as(uid, f"bindfs --no-allow-other {source} {point}")
        assert mounted.returncode == 0, mounted.stderr
        daemon = next(p.pid for p in proc.processes()
                      if p.uid == uid and p.comm == "bindfs" and str(point) in p.argv)
        try:
            mark = pam_sandbox.syslog.mark()
            with pam_sandbox.options("onerr=succeed"), su_for_users(pam_sandbox):
                login = subprocess.Popen(
                    as_user(uid, f"exec 3<{point}/f; kill -STOP {daemon}; "
                                 f"exec su {users.alice} -c 'cat /proc/1/comm' <&3"),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
                try:
                    lines = wait_for(lambda: module_lines_since(pam_sandbox, mark, settle=0),
                                     timeout=45, what="the module's line while the daemon stops")
                    real_uid = proc.status_fields(login.pid).get("Uid", "").split()[:1]
                finally:
                    os.kill(daemon, signal.SIGCONT)
                    out, _ = login.communicate(timeout=60)
        finally:
            os.kill(daemon, signal.SIGCONT)
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
            os.kill(daemon, signal.SIGKILL)
            subprocess.run(["rm", "-rf", str(arena)], check=False)
    assert real_uid == [str(uid)], f"su's real uid while the login is refused: {real_uid}"
    assert out.strip() in ("", proc.INIT_COMM), (out, lines)
    assert login.returncode != 0, (out, lines)
    assert len(lines) == 1 and "waiting for the session init to start" in lines[0], lines
    assert "onerr does not apply" in lines[0], lines
