"""Where the built module lives."""

from __future__ import annotations

from pathlib import Path

MODULE_NAME = "pam_unshare.so"


def module_path() -> Path:
    """The pam_unshare.so built with this package.

    A wheel or a checkout carries its own copy; the Debian package pam-unshare has a link to
    the one libpam-unshare installed, so this names the file PAM loads."""
    path = (Path(__file__).resolve().parent / "lib" / MODULE_NAME).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the package was not built (install it with pip install .)"
        )
    return path
