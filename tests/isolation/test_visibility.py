"""Inside a session only the session's processes exist. Every way a user might look at another
user's process (the probes) is tried from every way of logging in (the entry paths), against a
process of another user that runs outside any session with a secret on its command line.

Each probe prints "visible" or "hidden" for the foreign process, from what the tool itself shows;
a leak fails naming the host, the entry path and the probe. The control test runs the same
probes as root outside any session, where everything must be visible: a probe that cannot see
the process even there proves nothing.
"""

from __future__ import annotations

from typing import Dict

import pytest
from pam_unshare_testsupport.entries import ISOLATION_ENTRY_NAMES as ENTRY_NAMES

from isolation.targets import FOREIGN_SECRET, Target

# {pid}: the foreign process's PID on the host. Each command prints exactly "visible" or "hidden".
# The secret is matched as 'hunter[2]': the probe's own shell, which carries this text in its
# command line, must not count as the foreign process.
PROBES: Dict[str, str] = {
    "ps": "ps -e -o args= | grep -q 'hunter[2]' && echo visible || echo hidden",
    "proc-listing": "ls /proc | grep -qx {pid} && echo visible || echo hidden",
    "cmdline": "tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null | grep -q 'hunter[2]' "
               "&& echo visible || echo hidden",
    # environ is readable only by its owner and root: from the session, "hidden" must come from
    # the process being absent, so the probe asks whether the file exists at all.
    "environ": "[ -e /proc/{pid}/environ ] && echo visible || echo hidden",
    "kill-0": "kill -0 {pid} 2>&1 | grep -q 'No such process' && echo hidden || echo visible",
    "root-link": "[ -e /proc/{pid}/root ] || [ -L /proc/{pid}/root ] "
                 "&& echo visible || echo hidden",
    "ns-links": "ls /proc/{pid}/ns >/dev/null 2>&1 && echo visible || echo hidden",
    "status": "grep -qs . /proc/{pid}/status && echo visible || echo hidden",
    "mountinfo": "grep -qs . /proc/{pid}/mountinfo && echo visible || echo hidden",
    "pgrep": "pgrep -f 'hunter[2]' >/dev/null && echo visible || echo hidden",
    "top": "COLUMNS=512 top -b -c -n 1 -w 512 | grep -q 'hunter[2]' && echo visible || echo hidden",
    # A cgroup's member list holds host PIDs: the session's /proc must not resolve them.
    "cgroup-procs": "for f in $(find /sys/fs/cgroup -name cgroup.procs 2>/dev/null); do "
                    "grep -qx {pid} $f 2>/dev/null && [ -e /proc/{pid} ] && echo visible "
                    "&& exit; done; echo hidden",
}


def probe_script(pid: int) -> str:
    return "; ".join(f"echo {name}=$({command.format(pid=pid)})"
                     for name, command in PROBES.items())


def run_probes(target: Target, command: str) -> Dict[str, str]:
    result = target.host.run(command)
    assert result.rc == 0, f"{target.name}: rc {result.rc}: {result.stderr}"
    found = {}
    for line in result.stdout.replace("\r", "").splitlines():
        name, sep, verdict = line.partition("=")
        if sep and name in PROBES:
            found[name] = verdict.strip()
    assert set(found) == set(PROBES), f"{target.name}: probe output incomplete: {result.stdout}"
    return found


def test_control_every_probe_sees_the_process_outside_a_session(target):
    verdicts = run_probes(target, probe_script(target.foreign_pid))
    blind = sorted(name for name, verdict in verdicts.items() if verdict != "visible")
    assert blind == [], f"{target.name}: these probes do not see the foreign process even " \
                        f"from the host, so they prove nothing: {blind}"


def leak_report(target: Target, entry_name: str, verdicts: Dict[str, str]) -> str:
    """What a failing test says: the host, the entry path and each probe that saw through."""
    leaks = sorted(name for name, verdict in verdicts.items() if verdict != "hidden")
    if not leaks:
        return ""
    return (f"LEAK on {target.name} through {entry_name}: probes {', '.join(leaks)} show "
            f"{FOREIGN_SECRET!r} (PID {target.foreign_pid}) to pu_alice")


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_no_probe_sees_another_users_process(target, entry_name):
    command = target.entries[entry_name].command("pu_alice", probe_script(target.foreign_pid))
    report = leak_report(target, entry_name, run_probes(target, command))
    assert report == "", report


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_the_session_sees_only_itself_under_its_own_init(target, entry_name):
    listing = ("ps -e -o pid=,user=,args=; echo @@; echo comm:$(cat /proc/1/comm); "
               "echo args:$(tr '\\0' ' ' < /proc/1/cmdline)")
    result = target.host.run(target.entries[entry_name].command("pu_alice", listing))
    assert result.rc == 0, f"{target.name}/{entry_name}: {result.stderr}"
    processes, _, facts = result.stdout.replace("\r", "").partition("@@")
    rows = [line.split(None, 2) for line in processes.strip().splitlines()]
    assert rows[0][0] == "1" and rows[0][2].startswith("pam_unshare-init"), (
        f"{target.name}/{entry_name}: PID 1 is not the session's init: {rows}")
    assert {row[1] for row in rows[1:]} <= {"pu_alice", "root"}, (
        f"{target.name}/{entry_name}: other users' processes listed: {processes}")
    assert len(rows) <= 10, f"{target.name}/{entry_name} sees {len(rows)} processes: {processes}"
    assert "comm:pam_unshare\n" in facts
    assert "args:pam_unshare-init linger" in facts


# Probes that need more than being another user to see a process (root, or its owner): without
# the module an unprivileged user still cannot see through them.
OWNER_ONLY = {"ns-links"}


@pytest.mark.parametrize("entry_name", ["su", "ssh-command"])
def test_the_probes_catch_a_leak(target, entry_name):
    """Negative control: a user the module exempts sees the foreign process, and the leak check
    above would name every probe that shows it."""
    with target.options("exempt_users=pu_alice"):
        command = target.entries[entry_name].command("pu_alice",
                                                     probe_script(target.foreign_pid))
        verdicts = run_probes(target, command)
    seeing = {name for name, verdict in verdicts.items() if verdict == "visible"}
    assert seeing == set(PROBES) - OWNER_ONLY, (
        f"{target.name}/{entry_name}: without a namespace these probes should see the foreign "
        f"process, and only these do: {sorted(seeing)}")
    expected = ", ".join(sorted(set(PROBES) - OWNER_ONLY))
    assert leak_report(target, entry_name, verdicts) == (
        f"LEAK on {target.name} through {entry_name}: probes {expected} show "
        f"{FOREIGN_SECRET!r} (PID {target.foreign_pid}) to pu_alice")
