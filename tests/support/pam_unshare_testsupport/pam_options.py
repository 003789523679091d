"""Sets the options of every pam_unshare line in /etc/pam.d on a test host, and puts the files
back. Run there as root by the isolation suite (isolation/targets.py), in one call each way.

usage: pam_options.py set [OPTION ...] | restore
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

PAM_D = Path("/etc/pam.d")
BACKUP = Path("/run/pam-unshare-tests/pam.d")
# The module's line: type, control (a word or [value=action ...]), module path; then arguments.
MODULE_LINE = re.compile(r"^(\s*-?session\s+(?:\[[^\]]*\]|\S+)\s+\S*pam_unshare\.so)\b.*$",
                         re.MULTILINE)


def with_options(text: str, options: list[str]) -> str:
    suffix = "".join(f" {option}" for option in options)
    return MODULE_LINE.sub(lambda match: match.group(1) + suffix, text)


def replace(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.pu-tmp")
    temporary.write_text(text)
    shutil.copymode(path, temporary)
    os.replace(temporary, path)


def set_options(options: list[str]) -> None:
    BACKUP.mkdir(parents=True, exist_ok=True)
    for path in sorted(PAM_D.iterdir()):
        saved = BACKUP / path.name
        original = saved.read_text() if saved.exists() else None
        if original is None:
            if not path.is_file() or "pam_unshare.so" not in path.read_text():
                continue
            original = path.read_text()
            shutil.copy2(path, saved)
        replace(path, with_options(original, options))


def restore() -> None:
    if not BACKUP.exists():
        return
    for saved in sorted(BACKUP.iterdir()):
        replace(PAM_D / saved.name, saved.read_text())
        saved.unlink()


def main(argv: list[str]) -> int:
    if argv[:1] == ["set"]:
        set_options(argv[1:])
    elif argv == ["restore"]:
        restore()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
