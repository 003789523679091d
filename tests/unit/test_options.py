"""The module's option parser, called through the cffi binding (the same C the module runs)."""

from __future__ import annotations

import pytest

from pam_unshare.options import Rejection, name_in_list, parse


def test_defaults_are_the_safe_ones():
    options, rejections = parse([])
    assert rejections == ()
    assert options.onerr == "fail"
    assert options.propagation == "slave"
    assert options.on_logout == "linger"
    assert options.scope == "session"
    assert options.exempt_users == ("root",)
    assert options.exempt_groups is None
    assert options.only_groups is None
    assert options.debug is False


def test_every_option_is_understood():
    options, rejections = parse([
        "debug", "onerr=succeed", "propagation=private", "on_logout=kill", "scope=user",
        "exempt_users=root,alice", "exempt_groups=admins,wheel", "only_groups=students",
    ])
    assert rejections == ()
    assert options.debug is True
    assert options.onerr == "succeed"
    assert options.propagation == "private"
    assert options.on_logout == "kill"
    assert options.scope == "user"
    assert options.exempt_users == ("root", "alice")
    assert options.exempt_groups == ("admins", "wheel")
    assert options.only_groups == ("students",)


def test_an_empty_exempt_list_exempts_nobody_not_even_root():
    options, rejections = parse(["exempt_users="])
    assert rejections == ()
    assert options.exempt_users == ()


def test_the_last_occurrence_wins():
    options, _ = parse(["onerr=succeed", "onerr=fail"])
    assert options.onerr == "fail"


@pytest.mark.parametrize(
    "argument, reason",
    [
        ("frobnicate", "unknown option"),
        ("onerr=sometimes", "onerr must be fail or succeed"),
        ("onerr=", "onerr must be fail or succeed"),
        ("onerr", "unknown option"),
        ("propagation=shared", "propagation must be slave or private"),
        ("on_logout=", "on_logout must be linger or kill"),
        ("scope=users", "scope must be session or user"),
        ("only_groups=", "empty list"),
        ("exempt_users=alice,", "empty name in list"),
        ("exempt_users=,alice", "empty name in list"),
        ("exempt_users=al ice", "invalid character in name list"),
        ("exempt_users=-alice", "name in list starts with '-'"),
        ("exempt_groups=a:b", "invalid character in name list"),
        ("exempt_users=" + "a" * 257, "name in list too long"),
        ("exempt_users=$", "invalid character in name list"),
        ("DEBUG", "unknown option"),
        ("debug=1", "unknown option"),
    ],
)
def test_malformed_options_are_rejected_with_a_reason(argument, reason):
    _, rejections = parse([argument])
    assert rejections == (Rejection(argument, reason),)


@pytest.mark.parametrize(
    "arguments",
    [
        ["onerr=sometimes"],
        ["propagation=shared"],
        ["exempt_users=bad name"],
        ["only_groups="],
        ["exempt_groups=a,,b"],
    ],
)
def test_a_rejected_option_keeps_the_safe_default(arguments):
    options, rejections = parse(arguments)
    assert len(rejections) == 1
    assert options == parse([])[0]


def test_a_rejected_option_does_not_undo_earlier_good_ones():
    options, rejections = parse(["exempt_users=alice", "exempt_users=bad name"])
    assert len(rejections) == 1
    assert options.exempt_users == ("alice",)


@pytest.mark.parametrize("name", ["alice", "a.b-c_d", "user@example.com", "MACHINE$", "a" * 256])
def test_valid_names(name):
    options, rejections = parse([f"exempt_users={name}"])
    assert rejections == ()
    assert options.exempt_users == (name,)


def test_name_in_list_matches_whole_elements_only():
    assert name_in_list("root,alice", "alice")
    assert name_in_list("root,alice", "root")
    assert not name_in_list("root,alice", "ali")
    assert not name_in_list("root,alice", "alice2")
    assert not name_in_list("", "root")
    assert not name_in_list("root", "")


def test_a_nul_byte_is_rejected_not_truncated():
    _, rejections = parse(["exempt_users=root\0alice"])
    assert rejections[0].reason == "NUL byte in option"
