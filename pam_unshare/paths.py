"""Where the built module lives."""

from __future__ import annotations

from pathlib import Path

MODULE_NAME = "pam_unshare.so"


def module_path() -> Path:
    """The pam_unshare.so built with this package."""
    path = Path(__file__).resolve().parent / "lib" / MODULE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the package was not built (install it with pip install .)"
        )
    return path
