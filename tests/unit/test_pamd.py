"""Placing our session line in a PAM service file."""

from __future__ import annotations

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
