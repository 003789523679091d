"""Root's commands meet a pam_unshare.so that someone else controls (issue 20, item 2).

`check`, `status` and `enable` judge the module PAM would load. They must never load it in the
root process (loading runs its constructors), and must refuse a module that a user other than
root could replace: its file, or any directory on the way to it. The modules here are real
shared objects built with cc whose constructor leaves a marker file when anything loads them.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from conftest import require_root, require_tools

from pam_unshare import elf, system

SCRIPT = Path(sys.executable).parent / "pam-unshare"
NOBODY = 65534

MODULE_SOURCE = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void leave_a_marker(void)
{
    char text[64];
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        snprintf(text, sizeof text, "loaded by uid %d\n", (int)geteuid());
        (void)!write(fd, text, strlen(text));
        close(fd);
    }
}
#ifndef NO_SESSION
int pam_sm_open_session(void *pamh, int flags, int argc, const char **argv) { return 0; }
int pam_sm_close_session(void *pamh, int flags, int argc, const char **argv) { return 0; }
#endif
"""


def build(directory: Path, marker: Path, *defines: str) -> Path:
    """A real pam_unshare.so in DIRECTORY whose constructor appends a line to MARKER."""
    require_tools("cc")
    source = directory / "module.c"
    source.write_text(MODULE_SOURCE)
    target = directory / "pam_unshare.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(target), f'-DMARKER="{marker}"',
                    *defines, str(source)], check=True)
    source.unlink()
    os.chmod(target, 0o644)
    return target


def pam_unshare(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def pam_dir_using(tmp_path: Path, module: Path) -> Path:
    directory = tmp_path / "pam.d"
    directory.mkdir()
    (directory / "su").write_text(f"session required pam_permit.so\n"
                                  f"session required {module}\n")
    (directory / "login").write_text("session required pam_permit.so\n")
    return directory


def commands(pam_dir: Path, module: Path) -> List[List[str]]:
    return [["check", "--pam-dir", str(pam_dir)],
            ["status", "--pam-dir", str(pam_dir)],
            ["enable", "login", "--module", str(module), "--pam-dir", str(pam_dir)]]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    require_root()
    return tmp_path / "loaded"


def test_a_module_is_judged_without_being_loaded(tmp_path, marker):
    """A well-formed, root-owned module: every command accepts it and none loads it."""
    lib = tmp_path / "lib"
    lib.mkdir()
    module = build(lib, marker)
    pam_dir = pam_dir_using(tmp_path, module)
    for argv in commands(pam_dir, module):
        result = pam_unshare(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert not marker.exists(), f"pam-unshare {argv[0]} loaded the module as root: " \
                                    f"{marker.read_text()!r}"
    assert "pam_unshare.so is enabled for login, su" in pam_unshare(
        "check", "--pam-dir", str(pam_dir)).stdout


def _owned_by_nobody(lib: Path, module: Path) -> str:
    os.chown(module, NOBODY, NOBODY)
    return f"{module} is owned by nobody (uid {NOBODY}), not root"


def _in_a_directory_of_nobody(lib: Path, module: Path) -> str:
    os.chown(lib, NOBODY, NOBODY)
    return f"{lib} is owned by nobody (uid {NOBODY}), not root"


def _in_a_group_writable_directory(lib: Path, module: Path) -> str:
    os.chown(lib, 0, NOBODY)
    os.chmod(lib, 0o775)
    return f"{lib} is writable by group {grp.getgrgid(NOBODY).gr_name}"


def _through_a_symlink_in_a_directory_of_nobody(lib: Path, module: Path) -> str:
    # The module itself is root's; the link that names it sits where nobody can repoint it.
    real = lib.parent / "real"
    real.mkdir()
    os.replace(module, real / "pam_unshare.so")
    module.symlink_to(real / "pam_unshare.so")
    os.chown(lib, NOBODY, NOBODY)
    return f"{lib} is owned by nobody (uid {NOBODY}), not root"


def _a_users_symlink_in_a_sticky_directory(lib: Path, module: Path) -> str:
    # Like /tmp: root's directory, writable by all, sticky. Whoever owns a link there may
    # remove it and put another one in its place.
    real = lib.parent / "real"
    real.mkdir()
    os.replace(module, real / "pam_unshare.so")
    os.chmod(lib, 0o1777)
    module.symlink_to(real / "pam_unshare.so")
    os.lchown(module, NOBODY, NOBODY)
    return f"{module} is owned by nobody (uid {NOBODY}), not root"


def _writable_by_everyone(lib: Path, module: Path) -> str:
    os.chmod(module, 0o646)
    return f"{module} is writable by everyone"


@pytest.mark.parametrize("steer", [_owned_by_nobody, _in_a_directory_of_nobody,
                                   _in_a_group_writable_directory,
                                   _through_a_symlink_in_a_directory_of_nobody,
                                   _a_users_symlink_in_a_sticky_directory,
                                   _writable_by_everyone])
def test_a_module_someone_else_controls_is_refused_and_never_loaded(tmp_path, marker, steer):
    lib = tmp_path / "lib"
    lib.mkdir()
    module = build(lib, marker)
    why = steer(lib, module)
    pam_dir = pam_dir_using(tmp_path, module)
    before = {path.name: path.read_bytes() for path in pam_dir.iterdir()}
    check, status, enable = commands(pam_dir, module)

    result = pam_unshare(*check)
    assert result.returncode == 1
    assert f"{pam_dir / 'su'}:2: {why}: PAM runs whatever is at {module} as root in every " \
           f"session of su" in result.stdout.splitlines()

    result = pam_unshare(*status, "--json")
    assert result.returncode == 0
    assert any(why in problem for problem in json.loads(result.stdout)["problems"])

    result = pam_unshare(*enable)
    assert result.returncode == 2
    assert result.stderr == (f"pam-unshare: refusing to use {module}: {why}, and PAM would run "
                             f"whatever is there as root in every login; nothing written\n")
    assert {path.name: path.read_bytes() for path in pam_dir.iterdir()} == before
    assert not marker.exists(), f"root loaded a module nobody controls: {marker.read_text()!r}"


def _text_file(lib: Path, module: Path) -> str:
    module.write_text("session required pam_permit.so\n")
    return "is not an ELF file"


def _another_architecture(lib: Path, module: Path) -> str:
    data = bytearray(module.read_bytes())
    data[18:20] = (183 if data[18:20] != b"\xb7\x00" else 62).to_bytes(2, "little")
    module.write_bytes(bytes(data))
    return "is built for"


def _no_session_functions(lib: Path, module: Path) -> str:
    build(lib, lib / "never", "-DNO_SESSION")
    return "is not a PAM session module (no pam_sm_open_session, pam_sm_close_session)"


@pytest.mark.parametrize("spoil", [_text_file, _another_architecture, _no_session_functions])
def test_a_file_that_is_not_a_module_for_this_machine_is_refused(tmp_path, marker, spoil):
    lib = tmp_path / "lib"
    lib.mkdir()
    module = build(lib, marker)
    what = spoil(lib, module)
    pam_dir = pam_dir_using(tmp_path, module)
    check, _, enable = commands(pam_dir, module)
    result = pam_unshare(*check)
    assert result.returncode == 1
    assert f"{pam_dir / 'su'}:2: {module} {what}" in result.stdout
    assert "every session of su fails" in result.stdout
    result = pam_unshare(*enable)
    assert result.returncode == 2
    assert result.stderr.startswith(f"pam-unshare: {module} {what}")
    assert result.stderr.endswith(": every session would fail; nothing written\n")
    assert len(result.stderr.splitlines()) == 1
    assert not marker.exists()


def test_the_built_module_passes(tmp_path, module_path):
    """The real module, copied where root owns everything: accepted without loading."""
    require_root()
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copyfile(module_path, lib / "pam_unshare.so")
    os.chmod(lib / "pam_unshare.so", 0o644)
    pam_dir = pam_dir_using(tmp_path, lib / "pam_unshare.so")
    result = pam_unshare("check", "--pam-dir", str(pam_dir))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_truncated_or_garbled_module_gives_a_reason_never_an_exception(module_path):
    """Root reads files users may have written: the ELF reader must turn any input into a
    reason, never a crash (nor an index past the end)."""
    data = module_path.read_bytes()
    assert elf.module_problem(data, system.MODULE_FUNCTIONS) is None
    for cut in range(0, len(data) - 1, 61):
        assert elf.module_problem(data[:cut], system.MODULE_FUNCTIONS), cut
    for at in range(0, min(len(data), 4096), 7):
        garbled = bytearray(data)
        garbled[at] ^= 0xFF
        problem = elf.module_problem(bytes(garbled), system.MODULE_FUNCTIONS)
        assert problem is None or isinstance(problem, str)
