"""Who gets a namespace: root is exempt by default, exempt_users, exempt_groups and only_groups
choose others, and an exempt session is left exactly as it would be without the module. A
malformed option is reported and never makes isolation weaker than the default."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pam_unshare_testsupport.devlog import module_lines, severity
from pam_unshare_testsupport.entries import ISOLATION_ENTRY_NAMES as ENTRY_NAMES

from isolation.targets import Target

PROBE = ("echo pidns:$(readlink /proc/self/ns/pid); echo mntns:$(readlink /proc/self/ns/mnt); "
         "echo comm:$(cat /proc/1/comm)")
# Enough ways in to show the decision does not depend on the caller; root uses all of them.
SOME_ENTRIES = ["su", "sudo-nopty", "ssh-command"]
LOG_ERR = 3
# Who is exempt is the module's option logic, the same C on every kernel: the containers (Debian
# 12 and 13) and this machine run all of it natively; on the emulated VM, where each login costs
# ten times as much, only the defaults (tests/isolation/conftest.py; all with PU_ISOLATION_FULL=1).
NATIVE_SPEED_ONLY = ("test_exempt_users_exempts_exactly_the_users_named",
                     "test_exempt_users_replaces_the_default_so_root_is_namespaced",
                     "test_exempt_groups_exempts_the_members_only",
                     "test_only_groups_namespaces_the_members_only",
                     "test_a_group_that_does_not_exist_matches_nobody",
                     "test_a_malformed_option_is_reported_and_isolation_stays")


@dataclass(frozen=True)
class View:
    """What a process sees: its PID and mount namespaces and the name of its PID 1."""

    pidns: str
    mntns: str
    init_comm: str

    @property
    def namespaced(self) -> bool:
        return self.init_comm == "pam_unshare"


def own_view(target: Target) -> View:
    """The view of a root shell on the host, which is also every caller's (su, sudo and the
    ssh client start there)."""
    result = target.host.run(PROBE)
    assert result.rc == 0, f"{target.name}: {result.stderr}"
    return parse_view(result.stdout)


def parse_view(output: str) -> View:
    facts = {}
    for line in output.replace("\r", "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("pidns", "mntns", "comm"):
            facts[key] = value.strip()
    assert set(facts) == {"pidns", "mntns", "comm"}, f"probe output incomplete: {output!r}"
    return View(facts["pidns"], facts["mntns"], facts["comm"])


def session_view(target: Target, entry_name: str, user: str) -> View:
    result = target.host.run(target.entries[entry_name].command(user, PROBE))
    assert result.rc == 0, (f"{target.name}/{entry_name} as {user}: rc {result.rc}: "
                            f"{result.stderr}")
    return parse_view(result.stdout)


def assert_exempt(target: Target, view: View, what: str) -> None:
    """Exempt means untouched: the caller's own PID and mount namespaces, the host's PID 1."""
    assert view == own_view(target), f"{target.name}: {what} was changed by the module: {view}"


def assert_namespaced(target: Target, view: View, what: str) -> None:
    host = own_view(target)
    assert view.namespaced and view.pidns != host.pidns, (
        f"{target.name}: {what} is not namespaced: {view}")
    assert view.mntns != host.mntns, (
        f"{target.name}: {what} shares the caller's mount namespace: {view}")


# ---- root -------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_root_is_exempt_by_default(target, entry_name):
    since = target.log_mark()
    assert_exempt(target, session_view(target, entry_name, "root"), f"{entry_name} as root")
    # Left as without the module: not even a line in the log.
    assert module_lines(target.log_lines(since)) == []


@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_a_normal_user_is_namespaced_by_default(target, entry_name):
    assert_namespaced(target, session_view(target, entry_name, "pu_alice"), entry_name)


# ---- exempt_users -----------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_users_exempts_exactly_the_users_named(target, entry_name):
    with target.options("exempt_users=pu_alice"):
        alice = session_view(target, entry_name, "pu_alice")
        bob = session_view(target, entry_name, "pu_bob")
    assert_exempt(target, alice, f"{entry_name} as pu_alice")
    assert_namespaced(target, bob, f"{entry_name} as pu_bob")


@pytest.mark.parametrize("option", ["exempt_users=pu_alice", "exempt_users="])
@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_users_replaces_the_default_so_root_is_namespaced(target, entry_name, option):
    with target.options(option):
        root = session_view(target, entry_name, "root")
    assert_namespaced(target, root, f"{entry_name} as root with {option}")


# ---- groups -----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_exempt_groups_exempts_the_members_only(target, entry_name):
    with target.options("exempt_groups=pu_exempt"):
        views = {user: session_view(target, entry_name, user)
                 for user in ("pu_carol", "pu_alice", "pu_dave", "root")}
    assert_exempt(target, views["pu_carol"], f"{entry_name} as pu_carol")
    assert_namespaced(target, views["pu_alice"], f"{entry_name} as pu_alice")
    assert_namespaced(target, views["pu_dave"], f"{entry_name} as pu_dave")
    # exempt_users keeps its default.
    assert_exempt(target, views["root"], f"{entry_name} as root")


@pytest.mark.parametrize("entry_name", SOME_ENTRIES)
def test_only_groups_namespaces_the_members_only(target, entry_name):
    with target.options("only_groups=pu_only"):
        views = {user: session_view(target, entry_name, user)
                 for user in ("pu_dave", "pu_alice", "pu_carol")}
    assert_namespaced(target, views["pu_dave"], f"{entry_name} as pu_dave")
    assert_exempt(target, views["pu_alice"], f"{entry_name} as pu_alice")
    assert_exempt(target, views["pu_carol"], f"{entry_name} as pu_carol")


def test_a_group_that_does_not_exist_matches_nobody(target):
    with target.options("exempt_groups=pu_no_such_group"):
        alice = session_view(target, "su", "pu_alice")
    assert_namespaced(target, alice, "su as pu_alice")


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
def test_a_malformed_option_is_reported_and_isolation_stays(target, pam_argument, received):
    since = target.log_mark()
    with target.options(pam_argument):
        alice = session_view(target, "su", "pu_alice")
    assert_namespaced(target, alice, f"su as pu_alice with {received!r}")
    reports = [line for line in module_lines(target.log_lines(since))
               if "ignoring option" in line]
    assert len(reports) == 1, reports
    assert f'ignoring option "{received}"' in reports[0], reports
    assert severity(reports[0]) == LOG_ERR, reports
