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


@pytest.fixture
def cli_in(cli_run: CliRun, module_path: Path) -> Callable[[Path], CliRun]:
    """cli_run against a PAM directory: `cli_in(DIR)("enable", "su")` runs `pam-unshare enable su
    --pam-dir DIR --module MODULE_PATH` (the built module; module=False leaves --module out)."""
    def against(pam_dir: Path) -> CliRun:
        def invoke(*args: str, module: bool = True) -> Tuple[int, str, str]:
            argv = [*args, "--pam-dir", str(pam_dir)]
            if module and args[0] == "enable":
                argv += ["--module", str(module_path)]
            return cli_run(*argv)

        return invoke

    return against
