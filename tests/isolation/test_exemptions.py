"""Who gets a namespace: root is exempt by default, exempt_users, exempt_groups and only_groups
choose others, and an exempt session is left exactly as it would be without the module. A
malformed option is reported and never makes isolation weaker than the default."""

from __future__ import annotations

import os
import re
import shlex
import uuid
from dataclasses import dataclass
from typing import Dict, List

import pytest
from conftest import require_tools
from helpers.entries import ENTRY_NAMES, Entry
from testinfra.host import Host

PROBE = ("echo pidns:$(readlink /proc/self/ns/pid); echo mntns:$(readlink /proc/self/ns/mnt); "
         "echo comm:$(cat /proc/1/comm)")
# Enough ways in to show the decision does not depend on the caller; root uses all of them.
SOME_ENTRIES = ["su", "sudo-nopty", "ssh-command"]
LOG_ERR = 3
SYSLOG_LINE = re.compile(r"^<(\d+)>")


@dataclass(frozen=True)
class View:
    """What a process sees: its PID and mount namespaces and the name of its PID 1."""

    pidns: str
    mntns: str
    init_comm: str

    @property
    def namespaced(self) -> bool:
        return self.init_comm == "pam_unshare"


def own_view() -> View:
    """The view of this pytest process, which is also every caller's (su, sudo and the test
    sshd are its children)."""
    with open("/proc/1/comm", encoding="utf-8") as handle:
        comm = handle.read().strip()
    return View(os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/mnt"), comm)


def parse_view(output: str) -> View:
    facts = {}
    for line in output.replace("\r", "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("pidns", "mntns", "comm"):
            facts[key] = value.strip()
    assert set(facts) == {"pidns", "mntns", "comm"}, f"probe output incomplete: {output!r}"
    return View(facts["pidns"], facts["mntns"], facts["comm"])


def session_view(host: Host, entries: Dict[str, Entry], entry_name: str, user: str) -> View:
    result = host.run(entries[entry_name].command(user, PROBE))
    assert result.rc == 0, f"{entry_name} as {user}: rc {result.rc}: {result.stderr}"
    return parse_view(result.stdout)


def assert_exempt(view: View, what: str) -> None:
    """Exempt means untouched: the caller's own PID and mount namespaces, the host's PID 1."""
    assert view == own_view(), f"{what} was changed by the module: {view}"


def assert_namespaced(view: View, what: str) -> None:
    host = own_view()
    assert view.namespaced and view.pidns != host.pidns, f"{what} is not namespaced: {view}"
    assert view.mntns != host.mntns, f"{what} shares the caller's mount namespace: {view}"


def module_lines(lines: List[str]) -> List[str]:
    return [line for line in lines if "pam_unshare(" in line]


def severity(line: str) -> int:
    match = SYSLOG_LINE.match(line)
    assert match, f"not a syslog datagram: {line!r}"
    return int(match.group(1)) % 8


# ---- root -------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_root_is_exempt_by_default(host, pam_sandbox, entries, entry_name):
    since = pam_sandbox.syslog.mark()
    assert_exempt(session_view(host, entries, entry_name, "root"), f"{entry_name} as root")
    # Left as without the module: not even a line in the log.
    assert module_lines(pam_sandbox.syslog.lines(since)) == []


@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_a_normal_user_is_namespaced_by_default(host, entries, users, entry_name):
    assert_namespaced(session_view(host, entries, entry_name, users.alice), entry_name)


# ---- exempt_users -----------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_users_exempts_exactly_the_users_named(host, pam_sandbox, entries, users,
                                                      entry_name):
    with pam_sandbox.options(f"exempt_users={users.alice}"):
        alice = session_view(host, entries, entry_name, users.alice)
        bob = session_view(host, entries, entry_name, users.bob)
    assert_exempt(alice, f"{entry_name} as {users.alice}")
    assert_namespaced(bob, f"{entry_name} as {users.bob}")


@pytest.mark.parametrize("option", ["exempt_users=pu_alice", "exempt_users="])
@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_users_replaces_the_default_so_root_is_namespaced(host, pam_sandbox, entries,
                                                                 entry_name, option):
    with pam_sandbox.options(option):
        root = session_view(host, entries, entry_name, "root")
    assert_namespaced(root, f"{entry_name} as root with {option}")


# ---- groups -----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_groups_exempts_the_members_only(host, pam_sandbox, entries, users, entry_name):
    with pam_sandbox.options(f"exempt_groups={users.exempt_group}"):
        views = {user: session_view(host, entries, entry_name, user)
                 for user in (users.carol, users.alice, users.dave, "root")}
    assert_exempt(views[users.carol], f"{entry_name} as {users.carol}")
    assert_namespaced(views[users.alice], f"{entry_name} as {users.alice}")
    assert_namespaced(views[users.dave], f"{entry_name} as {users.dave}")
    # exempt_users keeps its default.
    assert_exempt(views["root"], f"{entry_name} as root")


@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_only_groups_namespaces_the_members_only(host, pam_sandbox, entries, users, entry_name):
    with pam_sandbox.options(f"only_groups={users.only_group}"):
        views = {user: session_view(host, entries, entry_name, user)
                 for user in (users.dave, users.alice, users.carol)}
    assert_namespaced(views[users.dave], f"{entry_name} as {users.dave}")
    assert_exempt(views[users.alice], f"{entry_name} as {users.alice}")
    assert_exempt(views[users.carol], f"{entry_name} as {users.carol}")


def test_a_group_that_does_not_exist_matches_nobody(host, pam_sandbox, entries, users):
    with pam_sandbox.options("exempt_groups=pu_no_such_group"):
        alice = session_view(host, entries, "su", users.alice)
    assert_namespaced(alice, f"su as {users.alice}")


# ---- malformed options ------------------------------------------------------------------------

# (what goes on the PAM line, the argument the module receives). Brackets let an argument hold
# spaces (pam.conf(5)).
MALFORMED = [
    ("[exempt_users=bad name!]", "exempt_users=bad name!"),
    # Read leniently, each of these would exempt alice or everybody.
    ("exempt_users=pu_alice,", "exempt_users=pu_alice,"),
    ("exempt_users=pu_alice;root", "exempt_users=pu_alice;root"),
    ("exempt_groups=pu_alice,,", "exempt_groups=pu_alice,,"),
    ("only_groups=", "only_groups="),
    ("only_groups=-pu_only", "only_groups=-pu_only"),
    ("exempt_users", "exempt_users"),
    ("onerr=sometimes", "onerr=sometimes"),
    ("propagation=shared", "propagation=shared"),
    ("on_logout=never", "on_logout=never"),
    ("frobnicate", "frobnicate"),
]


@pytest.mark.parametrize(("pam_argument", "received"), MALFORMED,
                         ids=[received for _, received in MALFORMED])
def test_a_malformed_option_is_reported_and_isolation_stays(host, pam_sandbox, entries, users,
                                                            pam_argument, received):
    since = pam_sandbox.syslog.mark()
    with pam_sandbox.options(pam_argument):
        alice = session_view(host, entries, "su", users.alice)
    assert_namespaced(alice, f"su as {users.alice} with {received!r}")
    reports = [line for line in module_lines(pam_sandbox.syslog.lines(since))
               if "ignoring option" in line]
    assert len(reports) == 1, reports
    assert f'ignoring option "{received}"' in reports[0], reports
    assert severity(reports[0]) == LOG_ERR, reports


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
