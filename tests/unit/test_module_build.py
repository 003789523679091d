"""The built module: what it exports, what it links, how it is hardened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import require_tools


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True,
                          check=True).stdout


def test_module_path_prints_the_absolute_path_of_the_built_module(module_path):
    script = Path(sys.executable).parent / "pam-unshare"
    result = subprocess.run([str(script), "module-path"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip())
    assert printed.is_absolute() and printed == module_path and printed.is_file()


def test_only_the_pam_entry_points_are_exported(module_path):
    require_tools("readelf")
    symbols = _readelf("--dyn-syms", str(module_path))
    defined = {fields[7] for fields in (line.split() for line in symbols.splitlines())
               if len(fields) >= 8 and fields[6] != "UND" and fields[4] == "GLOBAL"}
    assert defined == {"pam_sm_open_session", "pam_sm_close_session"}


def test_links_only_libc_and_libpam(module_path):
    require_tools("readelf")
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                            _readelf("-d", str(module_path))))
    assert needed == {"libc.so.6", "libpam.so.0"}


def test_is_hardened(module_path):
    require_tools("readelf")
    dynamic = _readelf("-d", str(module_path))
    segments = _readelf("-l", str(module_path))
    assert "BIND_NOW" in dynamic
    assert "GNU_RELRO" in segments
    stack = next(line for line in segments.splitlines() if "GNU_STACK" in line)
    assert "RWE" not in stack
    assert "__stack_chk_fail" in _readelf("--dyn-syms", str(module_path))
