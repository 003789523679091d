"""Under systemd / is a shared mount: a session's new mount namespace starts as a peer of the
host's, and mounting the session's /proc there would replace the host's /proc too (the 2016
sketch did exactly that). This machine's / is private, so the tests rebuild the systemd layout in
a nested sandbox:

    ns1: a new mount namespace with `mount --make-rshared /` (stands for the host)
    ns2: a second mount namespace copied from ns1 with propagation unchanged, so every mount in it
         is a peer of ns1's (stands for the login's caller); su, su - and sudo run here

and then check, in ns1 and ns2, that /proc still works and that not one mount came or went.
"""

from __future__ import annotations

import re
import shlex
from typing import Dict, List, Sequence

import pytest
from conftest import require_tools
from pam_unshare_testsupport.entries import Entry
from testinfra.host import Host

SESSION_ENTRIES = ["su", "su-login", "sudo-nopty", "sudo-pty", "python-pam"]
# Inside the session: its PID 1, and the propagation of its root mount (its own /proc/self).
SESSION_PROBE = ("echo comm:$(cat /proc/1/comm); "
                 "echo root:$(awk '$5 == \"/\"' /proc/self/mountinfo | tail -n 1)")
# Run in ns1 and in ns2: does /proc work, and whose PID 1 does it show.
PROC_FACTS = ("echo comm:$(cat /proc/1/comm); "
              "echo status:$(grep -c '^Pid:' /proc/self/status)")
SECTION = re.compile(r"^@@([\w-]+)$")


def section_marker(name: str) -> str:
    return f"echo @@{name}"


def nested_shared_root(peer_commands: Sequence[str]) -> str:
    """A root command line: builds ns1 (/ rshared) and its peer ns2, runs PEER_COMMANDS one
    after another in ns2, and prints each namespace's mount table and /proc facts before and
    after, in sections "@@name"."""
    peer = [section_marker("ns2-before"), "cat /proc/self/mountinfo"]
    for index, command in enumerate(peer_commands):
        peer += [section_marker(f"peer-{index}"), f"{command}; echo rc:$?"]
    peer += [section_marker("ns2-after"), "cat /proc/self/mountinfo",
             section_marker("ns2-facts"), PROC_FACTS]
    first = [
        "mount --make-rshared /",
        section_marker("ns1-before"), "cat /proc/self/mountinfo",
        f"unshare --mount --propagation unchanged sh -c {shlex.quote('; '.join(peer))}",
        section_marker("ns1-after"), "cat /proc/self/mountinfo",
        section_marker("ns1-facts"), PROC_FACTS,
    ]
    return f"unshare --mount --propagation unchanged sh -c {shlex.quote('; '.join(first))}"


def sections(output: str) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {}
    current = None
    for line in output.replace("\r", "").splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def part(found: Dict[str, List[str]], name: str) -> List[str]:
    """Section NAME of the scenario's output; missing means the scenario's script broke."""
    assert name in found, f"section {name} missing: the scenario stopped early ({sorted(found)})"
    return found[name]


def facts(lines: List[str]) -> Dict[str, str]:
    return dict(line.split(":", 1) for line in lines if ":" in line)


def proc_mounts(mountinfo: List[str]) -> List[str]:
    return [line for line in mountinfo if " - proc " in line]


def host_init_comm() -> str:
    with open("/proc/1/comm", encoding="utf-8") as handle:
        return handle.read().strip()


def assert_untouched(found: Dict[str, List[str]], namespace: str) -> None:
    """NAMESPACE's /proc still works and shows the host's PID 1, and it kept every mount it had
    and gained none."""
    seen = facts(part(found, f"{namespace}-facts"))
    assert seen.get("status") == "1", f"{namespace}: /proc/self/status unreadable: {seen}"
    assert seen.get("comm") == host_init_comm(), f"{namespace}: /proc shows another PID 1: {seen}"
    before, after = part(found, f"{namespace}-before"), part(found, f"{namespace}-after")
    assert proc_mounts(before), f"{namespace}: no proc mount to protect?"
    assert after, f"{namespace}: /proc/self/mountinfo unreadable after the sessions"
    assert len(proc_mounts(after)) == len(proc_mounts(before)), proc_mounts(after)
    gained = sorted(set(after) - set(before))
    lost = sorted(set(before) - set(after))
    assert not gained and not lost, f"{namespace}: mounts gained {gained}, lost {lost}"


@pytest.fixture(scope="module", autouse=True)
def _needs_tools() -> None:
    require_tools("unshare", "mount", "awk")


def test_the_nested_namespaces_really_propagate(host: Host, pam_sandbox):
    """The premise: a mount made in ns2 shows up in ns1. Were it not so, the checks below could
    not see a session's /proc leaking."""
    target = pam_sandbox.workdir / "shared-root-probe"
    target.mkdir(exist_ok=True)
    result = host.run(nested_shared_root([f"mount -t tmpfs pu-peer-probe {target}"]))
    assert result.rc == 0, result.stderr
    found = sections(result.stdout)
    assert facts(part(found, "peer-0")) == {"rc": "0"}
    gained = set(part(found, "ns1-after")) - set(part(found, "ns1-before"))
    assert any("pu-peer-probe" in line for line in gained), gained


@pytest.mark.parametrize("options", [(), ("propagation=slave",), ("propagation=private",)],
                         ids=["default", "slave", "private"])
def test_sessions_leave_a_shared_proc_alone(host: Host, pam_sandbox, entries, users, options):
    chosen: Dict[str, Entry] = {name: entries[name] for name in SESSION_ENTRIES}
    commands = [entry.command(users.alice, SESSION_PROBE) for entry in chosen.values()]
    with pam_sandbox.options(*options):
        result = host.run(nested_shared_root(commands))
    assert result.rc == 0, result.stderr
    found = sections(result.stdout)
    for index, name in enumerate(chosen):
        output = part(found, f"peer-{index}")
        seen = facts(output)
        assert seen.get("rc") == "0", f"{name}: {output} {result.stderr}"
        # Really namespaced, or the test proves nothing.
        assert seen.get("comm") == "pam_unshare", f"{name}: {seen}"
        root = seen.get("root", "")
        assert "shared:" not in root, f"{name}: the session's / is still shared: {root}"
        if "propagation=private" in options:
            assert "master:" not in root, f"{name}: private / is a slave: {root}"
        else:
            assert "master:" in root, f"{name}: slave / has no master: {root}"
    assert_untouched(found, "ns1")
    assert_untouched(found, "ns2")
