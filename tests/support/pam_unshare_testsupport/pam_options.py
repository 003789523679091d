"""Sets the options of every pam_unshare line in /etc/pam.d on a test host, and puts the files
back. Run there as root by the isolation suite (isolation/targets.py), in one call each way,
next to a copy of the package's pamd (the one writer of PAM files) and what it imports.

usage: pam_options.py set [OPTION ...] | restore
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pam_unshare import pamd

PAM_D = Path("/etc/pam.d")
BACKUP = Path("/run/pam-unshare-tests/pam.d")


def set_options(options: list[str]) -> None:
    BACKUP.mkdir(parents=True, exist_ok=True)
    for path in sorted(PAM_D.iterdir()):
        saved = BACKUP / path.name
        original = pamd.read(saved) if saved.exists() else None
        if original is None:
            if not path.is_file() or pamd.MODULE_TOKEN not in pamd.read(path):
                continue
            original = pamd.read(path)
            shutil.copy2(path, saved)
        pamd.write(path, pamd.with_arguments(original, options), backup=False)


def restore() -> None:
    if not BACKUP.exists():
        return
    for saved in sorted(BACKUP.iterdir()):
        pamd.write(PAM_D / saved.name, pamd.read(saved), backup=False)
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
