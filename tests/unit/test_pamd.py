"""Placing our session line in a PAM service file."""

from __future__ import annotations

import re

import pytest

from pam_unshare import pamd

DEBIAN_SU = """#%PAM-1.0
auth       sufficient pam_rootok.so
session       required   pam_env.so readenv=1
@include common-auth
@include common-account
@include common-session
"""

SSHD = """@include common-auth
account    required     pam_nologin.so
session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so close
session    required     pam_loginuid.so
@include common-session
session    optional     pam_motd.so  motd=/run/motd.dynamic
session [success=ok ignore=ignore module_unknown=ignore default=bad]        pam_selinux.so open
@include common-password
"""


def test_goes_after_every_session_line_and_include():
    text = pamd.with_session_line(DEBIAN_SU, pamd.session_line())
    assert text.splitlines()[-1] == "session required pam_unshare.so"


def test_after_the_last_include_even_when_later_lines_follow():
    lines = pamd.with_session_line(SSHD, pamd.session_line()).splitlines()
    assert lines[-1] == "session required pam_unshare.so"
    assert lines.index("session required pam_unshare.so") > lines.index(
        "session    required     pam_loginuid.so")


def test_the_line_is_replaced_not_duplicated():
    once = pamd.with_session_line(DEBIAN_SU, pamd.session_line(options=["debug"]))
    twice = pamd.with_session_line(once, pamd.session_line(options=["onerr=succeed"]))
    assert twice.count("pam_unshare.so") == 1
    assert "onerr=succeed" in twice and "debug" not in twice


def test_an_absolute_module_path_counts_as_ours():
    first = pamd.with_session_line(DEBIAN_SU, pamd.session_line("/opt/x/pam_unshare.so"))
    second = pamd.with_session_line(first, pamd.session_line())
    assert second.count("pam_unshare.so") == 1


def test_a_comment_mentioning_the_module_is_kept():
    text = "# pam_unshare.so is enabled below\n" + DEBIAN_SU
    assert "# pam_unshare.so is enabled below" in pamd.with_session_line(text,
                                                                        pamd.session_line())


ONE = "session required pam_unshare.so"


def test_enabling_twice_changes_nothing():
    once = pamd.with_session_line(DEBIAN_SU, ONE)
    assert pamd.with_session_line(once, ONE) == once


def test_disable_restores_the_original_bytes():
    for text in (DEBIAN_SU, SSHD, "", "@include common-session",
                 "@include common-session\nauth required pam_permit.so",
                 "session required pam_permit.so\n\n# trailing comment\n\n"):
        enabled = pamd.with_session_line(text, ONE)
        assert enabled.count("pam_unshare.so") == 1
        assert pamd.without_session_line(enabled) == text


def test_a_file_without_a_final_newline_keeps_lacking_it():
    text = "session required pam_permit.so\n@include common-session"
    enabled = pamd.with_session_line(text, ONE)
    assert enabled == text + "\n" + ONE
    assert pamd.without_session_line(enabled) == text


def test_an_option_change_rewrites_the_line_in_place():
    text = DEBIAN_SU + "# end\n"
    once = pamd.with_session_line(text, ONE + " debug")
    twice = pamd.with_session_line(once, ONE + " onerr=succeed")
    assert once.splitlines().index(ONE + " debug") == twice.splitlines().index(
        ONE + " onerr=succeed")
    assert pamd.without_session_line(twice) == text


def test_a_misplaced_line_is_moved_after_the_last_include():
    text = "session required pam_unshare.so\n" + DEBIAN_SU
    lines = pamd.with_session_line(text, ONE).splitlines()
    assert lines[-1] == ONE and lines.count(ONE) == 1


def test_a_commented_out_line_is_not_ours():
    text = DEBIAN_SU + "# session required pam_unshare.so\n"
    assert pamd.without_session_line(text) == text
    assert pamd.parse(text).ours() == []


def test_continued_lines_and_bracketed_controls():
    text = ("session [success=ok ignore=ignore module_unknown=ignore default=bad] \\\n"
            "    pam_selinux.so close\n"
            "-session optional pam_systemd.so # a comment \\\n"
            "@include common-session\n")
    rules = pamd.parse(text).rules
    assert [(r.type, r.control, r.module, r.number) for r in rules] == [
        ("session", "[success=ok ignore=ignore module_unknown=ignore default=bad]",
         "pam_selinux.so", 1),
        ("session", "optional", "pam_systemd.so", 3),
        ("", "", "common-session", 4),
    ]
    assert rules[0].args == ("close",) and rules[0].last == 1 and rules[1].silent
    enabled = pamd.with_session_line(text, ONE)
    assert enabled.endswith("@include common-session\n" + ONE + "\n")


@pytest.mark.parametrize("line, reason", [
    ("sesion required pam_permit.so", '"sesion" is neither a module type'),
    ("session requird pam_permit.so", 'control field "requird" is neither'),
    ("session [default=1 pam_permit.so", 'has no closing "]"'),
    ("session required", "no module path"),
    ("session", "no control field"),
    ("@include", "@include without a file name"),
])
def test_a_file_that_does_not_parse_is_refused(line, reason):
    with pytest.raises(pamd.ParseError, match=re.escape(reason)) as caught:
        pamd.with_session_line(DEBIAN_SU + line + "\n", ONE)
    assert caught.value.number == len(DEBIAN_SU.splitlines()) + 1


def test_with_arguments_keeps_each_lines_type_control_and_module():
    # A test host's file (tests/support pam_options.py): the admin's control, a silent line, a
    # continued one and a CRLF ending stay; only the arguments change; other lines are untouched.
    text = ("session required pam_env.so readenv=1\n"
            "-session [success=ok default=bad] /lib/security/pam_unshare.so onerr=fail\r\n"
            "session optional pam_unshare.so \\\n  debug\n"
            "# session required pam_unshare.so in a comment\n")
    assert pamd.with_arguments(text, ["scope=user", "debug"]) == (
        "session required pam_env.so readenv=1\n"
        "-session [success=ok default=bad] /lib/security/pam_unshare.so scope=user debug\r\n"
        "session optional pam_unshare.so scope=user debug\n"
        "# session required pam_unshare.so in a comment\n")
    assert pamd.with_arguments(text, []).splitlines()[2] == "session optional pam_unshare.so"
