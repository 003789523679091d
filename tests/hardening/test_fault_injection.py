"""Every failure path of the module, injected, under su, sudo and sshd, with onerr=fail and
onerr=succeed.

For each step (see faults.STEPS) the shim fails that one call in the real module, and the test
checks: the injected call was reached; the outcome is the documented one (fail: the login is
refused and the command never runs; succeed: it runs outside any namespace; steps the module
recovers from: a namespaced session and no log line); exactly one error line names the step and
the errno text; the caller neither crashed nor hung; and nothing is left: no init-to-be (not even
a zombie), no process in any namespace the module made, no change to the mount table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import require_tools
from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.devlog import module_lines, severity
from pam_unshare_testsupport.entries import TEST_SERVICE

from hardening.conftest import figure
from hardening.faults import (
    BY_ID,
    CLOSE,
    CSRC,
    INIT_PROBE,
    OPEN,
    RECOVERS,
    STEP_IDS,
    STEPS,
    SessionInit,
    inits_in_output,
    inits_of,
    leftovers,
    markdown_table,
    mount_table,
    other_procfs_mounted,
    run,
    session_probe,
    wait_for_lines,
    wait_no_leftovers,
)

CALLERS = ["su", "sudo", "sshd"]
PAM_LOOP = str(Path(__file__).resolve().parent / "pam_loop.py")
ONERR = ["fail", "succeed"]
LOG_ERR = 3
# Killed by a signal, or by timeout(1): a crash or a hang of the caller.
CRASH_OR_HANG = {124, 125, 126, 137} | set(range(128, 160))

injected_total: List[str] = []


@pytest.fixture(scope="module", autouse=True)
def _tools() -> Iterator[None]:
    require_tools("timeout", "env")
    yield
    figure("fault-injection runs (step x caller x onerr) with the fault hit", len(injected_total))
    figure("fault-injection distinct steps hit", len(set(injected_total)))


def start_user_namespace(user: str, tag: str) -> SessionInit:
    """A namespace of USER (scope=user) kept alive by a tagged background job: what a
    scope=user session joins. Started without the shim."""
    result = subprocess.run(
        ["su", user, "-c", f"{hostprocs.tag_assignment(tag)} nohup sleep 120 >/dev/null 2>&1 & "
                           f"{INIT_PROBE}"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    found = inits_in_output(result.stdout)
    assert len(found) == 1, result.stdout
    return found[0]


@pytest.mark.parametrize("onerr", ONERR)
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("step_id", STEP_IDS)
def test_an_injected_failure_has_the_documented_outcome(pam_sandbox, users, fault_dir,
                                                        fault_callers, marker_dir,
                                                        user_state_dir, step_id, caller, onerr):
    step = BY_ID[step_id]
    user = users.alice
    named = user if step.user_known else "(unknown)"
    host_pidns = os.readlink("/proc/self/ns/pid")
    marker = marker_dir / f"fault-{step_id}-{caller}-{onerr}-{uuid.uuid4().hex}"
    mounts_before = mount_table()
    tag = hostprocs.new_tag()
    holder: List[SessionInit] = []
    try:
        with pam_sandbox.options(*step.options, f"onerr={onerr}"), \
                other_procfs_mounted(step.other_procfs):
            if step.needs_namespace:
                holder.append(start_user_namespace(user, tag))
            fault_dir.arm(step.spec)
            since = pam_sandbox.syslog.mark()
            result = run(fault_callers[caller](user, session_probe(marker)))
            left_at_return = leftovers(inits_of(fault_dir.clones()), strict=True) \
                if step.outcome == OPEN else []

            def read() -> List[str]:
                return module_lines(pam_sandbox.syslog.lines(since, settle=0))

            if step.outcome == RECOVERS:
                # Nothing is expected: give a stray line the time to arrive.
                lines = module_lines(pam_sandbox.syslog.lines(since, settle=0.3))
            else:
                # sshd closes the session after the client has gone: wait for its line.
                lines = wait_for_lines(read, lambda found: any(step.step in line
                                                               for line in found))
                lines = module_lines(pam_sandbox.syslog.lines(since, settle=0.2))
            clones = fault_dir.clones()
            injected = fault_dir.injected()
            shim_log = fault_dir.log()
            fault_dir.arm("")
    finally:
        for process in hostprocs.tagged(tag):
            hostprocs.kill(process)
    where = f"{step_id} under {caller}, onerr={onerr}"
    output = result.stdout.replace("\r", "")
    context = f"{where}: rc={result.returncode}\nstdout={output}\nstderr={result.stderr}\n" \
              f"log={lines}\nshim={shim_log}"

    # The fault was really injected, and the caller neither crashed nor hung.
    for name in step.hit:
        assert name in injected, f"{where}: the module never reached {name}: {injected}"
    injected_total.append(step_id)
    assert result.returncode not in CRASH_OR_HANG, f"crash or hang: {context}"
    assert "core dumped" not in result.stderr and "Segmentation" not in result.stderr, context

    if step.outcome == OPEN and onerr == "fail":
        assert result.returncode != 0, f"the session was not refused: {context}"
        assert not marker.exists(), f"the command ran in a refused session: {context}"
        assert "ran:yes" not in output, context
        assert len(lines) == 1, context
        assert severity(lines[0]) == LOG_ERR, context
        assert f"{step.step} failed for user {named}: {step.errno_text}; refusing the session" \
            in lines[0], context
    elif step.outcome == OPEN:
        assert result.returncode == 0, context
        assert marker.exists(), context
        assert f"pidns:{host_pidns}\n" in output, f"not the host's namespace: {context}"
        assert "comm:pam_unshare\n" not in output, context
        assert len(lines) == 1, context
        assert severity(lines[0]) == LOG_ERR, context
        assert lines[0].endswith(
            f"{step.step} failed for user {named}: {step.errno_text}; session continues "
            "without a namespace (onerr=succeed)"), context
    elif step.outcome == RECOVERS:
        assert result.returncode == 0, context
        assert marker.exists(), context
        assert "comm:pam_unshare\n" in output, f"not namespaced: {context}"
        assert f"pidns:{host_pidns}\n" not in output, context
        assert lines == [], f"a recovered step logged: {context}"
    else:
        assert step.outcome == CLOSE
        assert marker.exists(), context
        assert "comm:pam_unshare\n" in output, f"not namespaced: {context}"
        assert len(lines) == 1, context
        assert severity(lines[0]) == LOG_ERR, context
        assert f"{step.step} failed at session close: {step.errno_text}" in lines[0], context

    # Nothing left behind. A refused or un-namespaced session has its init-to-be killed and
    # reaped before pam_open_session returns; a namespaced one ends when its lifeline closes.
    assert left_at_return == [], f"left when the caller returned: {left_at_return}\n{context}"
    assert wait_no_leftovers([*inits_of(clones), *holder]) == [], context
    if step.outcome in (RECOVERS, CLOSE):
        assert clones, f"{where}: the shim saw no namespace made: {context}"
    assert mount_table() == mounts_before, f"{where}: the mount table changed"


def test_the_shim_is_not_part_of_the_shipped_module(module_path):
    """The mechanism is test-only: the module exports and imports nothing of it."""
    require_tools("nm")
    symbols = subprocess.run(["nm", "-D", str(module_path)], capture_output=True, text=True,
                             check=True).stdout
    assert "PU_FAULT" not in open(module_path, "rb").read().decode("latin-1")
    assert "fault" not in symbols
    exported = [line.split()[-1] for line in symbols.splitlines() if " T " in line]
    assert sorted(exported) == ["pam_sm_close_session", "pam_sm_open_session"], exported


def test_without_a_fault_the_shim_changes_nothing(pam_sandbox, users, fault_dir,
                                                  fault_callers, marker_dir):
    """The control: with the shim loaded and nothing armed, every caller gets a namespaced
    session and the shim records the one namespace the module made."""
    for caller in CALLERS:
        marker = marker_dir / f"control-{caller}-{uuid.uuid4().hex}"
        fault_dir.arm("")
        result = run(fault_callers[caller](users.alice, session_probe(marker)))
        output = result.stdout.replace("\r", "")
        assert result.returncode == 0, f"{caller}: {result.stderr}"
        assert "comm:pam_unshare\n" in output, f"{caller}: {output}"
        clones = fault_dir.clones()
        assert len(clones) == 1, f"{caller}: {fault_dir.log()}"
        assert wait_no_leftovers(inits_of(clones)) == []


def test_every_logged_step_has_a_fault():
    """Each step text the module can log on its way into or out of a session is injected above:
    a new step in the C without a fault here fails this test."""
    text = "".join((CSRC / name).read_text() for name in ("namespace.c", "module.c", "exempt.c"))
    text = text.replace('" STATE_DIR "', "/run/pam_unshare")
    text = text.replace('" STATE_DIR', '/run/pam_unshare"')
    logged = set(re.findall(r'(?:fail|refuse)\(why, "([^"]+)"', text))
    logged |= set(re.findall(r'\[STEP_[A-Z_]+\] = "([^"]+)"', text))
    logged |= set(re.findall(r'\(struct pu_failure\)\{"([^"]+)"', text))
    logged |= set(re.findall(r'pu_failure_of\("([^"]+)"', text))
    assert len(logged) > 30, logged
    covered = {step.step for step in STEPS}
    assert sorted(logged - covered - POLICY_REFUSALS) == []
    assert sorted(POLICY_REFUSALS - logged) == [], "a policy refusal the C no longer logs"


# Not faults but the module's answer to what a user did; each is performed by an attack test.
POLICY_REFUSALS = {
    "checking the caller's RLIMIT_NOFILE (the user's limit)":
        "test_attack_login.py::test_a_users_rlimit_does_not_leave_the_session_un_namespaced",
    "checking the caller's RLIMIT_FSIZE (the user's limit)":
        "test_attack_login.py::test_a_users_rlimit_does_not_leave_the_session_un_namespaced",
    "looking up a group named in only_groups (no such group)":
        "test_attack_login.py::test_an_unknown_only_group_refuses_the_session_under_onerr_fail",
    "mapping the stack of the clone child (the user's limits)":
        "test_attack_login.py::test_a_users_address_space_limit_does_not_leave_the_session_"
        "un_namespaced",
    "counting the user's sessions (max_sessions reached)":
        "test_attack_init.py::test_max_sessions_bounds_one_users_sessions",
    "joining the user's namespace (max_sessions reached)":
        "test_attack_init.py::test_a_full_namespace_refuses_the_joiner_and_stays_the_only_one",
    # The first piece of a concatenated C literal: the module's refusal of systemd-user and
    # systemd-run0, whose caller execs the program itself.
    "namespacing a session whose caller execs the program itself ":
        "test_systemd_host.py::test_a_line_in_systemd_user_is_refused_in_one_clear_line",
}.keys()


FD_STEPS = [step.id for step in STEPS if not step.needs_namespace and "HANG" not in step.spec]


@pytest.mark.parametrize("step_id", FD_STEPS)
def test_no_descriptor_is_left_in_the_caller_on_any_failure_path(pam_sandbox, users, fault_dir,
                                                                 user_state_dir, step_id):
    """python-pam as the caller, with the shim: after a failed (or un-namespaced) open, and
    after close, the process holds exactly the descriptors it held before pam_open_session."""
    step = BY_ID[step_id]
    for onerr in ONERR:
        with pam_sandbox.options(*step.options, f"onerr={onerr}"), \
                other_procfs_mounted(step.other_procfs):
            fault_dir.arm(step.spec)
            result = subprocess.run(
                [sys.executable, PAM_LOOP, TEST_SERVICE, users.alice, "1", INIT_PROBE],
                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                env={**os.environ, **fault_dir.env})
            injected, clones = fault_dir.injected(), fault_dir.clones()
            fault_dir.arm("")
        where = f"{step_id}, onerr={onerr}: {result.stdout} {result.stderr}"
        assert result.returncode == 0, where
        assert all(name in injected for name in step.hit), where
        session = json.loads(result.stdout.splitlines()[0])["session"]
        refused = step.outcome == OPEN and onerr == "fail"
        assert (session["open_rc"] != 0) == refused, where
        if step.outcome == OPEN:
            assert session["fds_open"] == session["fds_before"], f"state kept: {where}"
        assert session["fds_closed"] == session["fds_before"], f"descriptor leaked: {where}"
        assert wait_no_leftovers(inits_of(clones)) == [], where


@pytest.mark.parametrize("spec", ["pidfd_open:1:EMFILE", "read:1:EIO", "poll:2:ENOMEM"])
def test_a_transient_error_while_joining_does_not_split_the_users_namespace(
        pam_sandbox, users, fault_dir, fault_callers, user_state_dir, spec):
    """scope=user promises one namespace per user. An error that says nothing about the
    namespace's PID 1 (out of descriptors, out of memory, an I/O error) must be a failure of
    this login (onerr, one log line), not a reason to retire a live namespace."""
    tag = hostprocs.new_tag()
    try:
        with pam_sandbox.options("scope=user"):
            holder = start_user_namespace(users.alice, tag)
            since = pam_sandbox.syslog.mark()
            fault_dir.arm(spec)
            result = run(fault_callers["su"](users.alice, INIT_PROBE))
            injected = fault_dir.injected()
            fault_dir.arm("")
            lines = module_lines(pam_sandbox.syslog.lines(since, settle=0.2))
            after = run(["su", users.alice, "-c", INIT_PROBE])
    finally:
        for process in hostprocs.tagged(tag):
            hostprocs.kill(process)
    assert injected == [spec.split(":")[0]]
    joined = inits_in_output(result.stdout)
    refused = result.returncode != 0 and len(lines) == 1
    assert refused or joined == [holder], (result, lines)
    assert inits_in_output(after.stdout) == [holder], "the user's namespace was split"


def test_the_readme_shows_the_fault_table_of_the_code():
    """The README's table is this module's table, not a copy kept by hand: regenerate it with
    `cd tests && python3 -m hardening.faults`. The count in the text above it too."""
    readme = (CSRC.parent / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme
    assert f"`STEPS` in `tests/hardening/faults.py` lists {len(STEPS)}\n" in readme
