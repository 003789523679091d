"""Fixtures of the unit tests: Debian's real PAM files as a writable temporary tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
