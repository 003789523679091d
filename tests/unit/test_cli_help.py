"""The command line's manners: --help with examples everywhere, one-line errors and no traceback,
commands that need root saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_root

from pam_unshare import cli

SCRIPT = Path(sys.executable).parent / "pam-unshare"
COMMANDS = ("install", "uninstall", "enable", "disable", "status", "sessions", "enter", "check",
            "module-path", "demo", "verify")
ROOT_COMMANDS = ("install", "uninstall", "enable", "disable", "sessions", "enter", "demo",
                 "verify")


def pam_unshare(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    # A fixed width, so that argparse wraps the help the same way everywhere.
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "100"})


def test_top_level_help_lists_every_command_with_examples():
    result = pam_unshare("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "examples:" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    result = pam_unshare(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert f"pam-unshare {command}" in result.stdout.split("examples:", 1)[1] or \
        f"sudo pam-unshare {command}" in result.stdout


@pytest.mark.parametrize("command", ROOT_COMMANDS)
def test_help_says_which_commands_need_root(command):
    listing = pam_unshare("--help").stdout
    summary = next(line for line in listing.splitlines() if line.strip().startswith(command))
    assert "(root)" in summary


@pytest.mark.parametrize("args, status, message", [
    (["enable", "su", "-o", "frobnicate"], 2, 'invalid option "frobnicate": unknown option'),
    (["check", "--pam-dir", "/nonexistent/pam.d"], 2, "/nonexistent/pam.d: no such directory"),
    (["status", "--pam-dir", "/nonexistent/pam.d"], 2, "no such directory"),
    (["enable", "su", "--pam-dir", "/nonexistent/pam.d", "--dry-run", "--module", "/x/y"], 2,
     "--module must name a file called pam_unshare.so"),
    (["install", "--dest", "/nonexistent/dir"], 2, "/nonexistent/dir: no such directory"),
])
def test_errors_are_one_line_without_a_traceback(args, status, message):
    result = pam_unshare(*args)
    assert result.returncode == status
    assert result.stderr.startswith("pam-unshare: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, reason", [
    (["sessions"], "pam-unshare sessions must run as root"),
    (["enter", "1"], "pam-unshare enter must run as root"),
    (["install"], "pam-unshare install must run as root"),
    (["uninstall"], "pam-unshare uninstall must run as root"),
    (["verify"], "pam-unshare verify must run as root"),
])
def test_commands_that_need_root_say_so(args, reason, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pam-unshare: {reason}")
    assert len(err.splitlines()) == 1


def test_enable_without_write_access_says_it_needs_root(monkeypatch, capsys, tmp_path,
                                                        module_path):
    pam_dir = tmp_path / "pam.d"
    pam_dir.mkdir()
    (pam_dir / "su").write_text("@include common-session\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cli.main(["enable", "su", "--pam-dir", str(pam_dir), "--module",
                     str(module_path)]) == 1
    assert "pam-unshare enable must run as root: it rewrites files in" in capsys.readouterr().err
    assert (pam_dir / "su").read_text() == "@include common-session\n"


def test_an_unexpected_error_is_one_line(monkeypatch, capsys):
    def broken(_args):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(cli, "_status", broken)
    assert cli.main(["status"]) == 70
    err = capsys.readouterr().err
    assert err == "pam-unshare: internal error: RuntimeError: something nobody expected\n"


def test_enter_refuses_an_unknown_session(capsys):
    require_root()
    assert cli.main(["enter", "999999999", "--", "true"]) == 2
    assert "no live session has id or PID 999999999" in capsys.readouterr().err
    assert cli.main(["enter", "alice"]) == 2
    assert '"alice" is not a session id or PID' in capsys.readouterr().err
