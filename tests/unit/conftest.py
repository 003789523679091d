"""Fixtures of the unit tests: Debian's real PAM files as a writable temporary tree, and the
command line run in this process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Tuple

import pytest

from pam_unshare import cli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pam.d"


@pytest.fixture
def pam_dir(tmp_path: Path) -> Path:
    """A writable copy of the Debian fixture tree (the fixtures themselves stay read-only)."""
    directory = tmp_path / "pam.d"
    directory.mkdir()
    for path in FIXTURES.iterdir():
        shutil.copyfile(path, directory / path.name)
        os.chmod(directory / path.name, 0o644)
    return directory


CliRun = Callable[..., Tuple[int, str, str]]


@pytest.fixture
def cli_run(capsys: pytest.CaptureFixture[str]) -> CliRun:
    """Runs `pam-unshare ARGV...` in this process; returns (exit status, stdout, stderr)."""
    def invoke(*argv: str) -> Tuple[int, str, str]:
        status = cli.main(list(argv))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return invoke
