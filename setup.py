"""Build glue: the cffi extension over the C core, and the PAM module itself (csrc/Makefile).

The PAM module is not a Python extension, so build_ext runs make for it and ships the result
inside the package, where `pam-unshare module-path` finds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class BuildWithModule(build_ext):
    def run(self) -> None:
        super().run()
        out_dir = Path(self.build_temp).resolve() / "csrc"
        version = self.distribution.get_version()
        subprocess.run(
            [
                "make",
                "-C",
                str(ROOT / "csrc"),
                f"O={out_dir}",
                f"EXTRA_CFLAGS=-DPU_VERSION=\\\"{version}\\\"",
            ],
            check=True,
        )
        package_dir = ROOT / "pam_unshare" if self.inplace else Path(self.build_lib) / "pam_unshare"
        target = package_dir / "lib" / "pam_unshare.so"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".so.tmp")
        shutil.copyfile(out_dir / "pam_unshare.so", tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        # The D-Bus policy is written once, for the Debian package; `pam-unshare install`
        # ships the same file on other hosts.
        policy = package_dir / "lib" / "dbus-policy.conf"
        # packaging/debian in a checkout or an sdist; debian/ in the Debian package's build tree.
        sources = [ROOT / d / "dbus" / "pam-unshare.conf" for d in ("packaging/debian", "debian")]
        shutil.copyfile(next(p for p in sources if p.is_file()), policy)
        os.chmod(policy, 0o644)


setup(
    cffi_modules=["pam_unshare/_build.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithModule},
    package_data={"pam_unshare": ["lib/pam_unshare.so", "lib/dbus-policy.conf"]},
)
