"""Root's `enable --pam-dir` meets PAM files that someone swaps under its feet (issue 20, item 4).

A racer replaces the service file, over and over, with a symlink to a root-owned target (a
stand-in for /etc/ld.so.preload) and back, while root runs the real command line. Root must
never write the target: a directory a user controls is refused outright, and in root's own
directory the file is opened with O_NOFOLLOW and replaced only if it is still the file read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import require, require_root

SCRIPT = Path(sys.executable).parent / "pam-unshare"
NOBODY = 65534
SERVICE = "auth required pam_permit.so\nsession required pam_permit.so\n"
TARGET = "session required pam_permit.so\n# the target: root must never write here\n"
# The system's Python: nobody cannot run the one in root's home, where pyenv may keep it.
RACER_PYTHON = "/usr/bin/python3"
RACE_SECONDS = 90  # the racer stops by itself even if the test dies

RACER = r"""
import os, sys, time
directory, target, text, seconds = sys.argv[1:5]
deadline = time.monotonic() + float(seconds)
service, link, plain = (os.path.join(directory, name) for name in ("su", ".link", ".plain"))
swaps = 0
while time.monotonic() < deadline and not os.path.exists(os.path.join(directory, ".stop")):
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass
    os.symlink(target, link)
    os.rename(link, service)
    with open(plain, "w") as handle:
        handle.write(text)
    os.rename(plain, service)
    swaps += 1
print(swaps)
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside pytest's 0700 temporary tree, so that nobody can reach the PAM directory."""
    require_root()
    require(os.path.exists(RACER_PYTHON), f"needs {RACER_PYTHON} for the racer")
    directory = Path(tempfile.mkdtemp(prefix="pam-unshare-race-"))
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], check=True)


# Each run is a CLI process (about 0.2 s); the racer wins the swap in a good part of them.
RACE_RUNS = 100


def race(workdir: Path, pam_dir: Path, module_path: Path, tries: int,
         user: int | None) -> List[subprocess.CompletedProcess]:
    """Runs `enable su` up to TRIES times while the racer (as USER) swaps su; stops at the first
    run after which the target has changed. Returns the runs."""
    target = workdir / "target"
    racer = subprocess.Popen(
        [RACER_PYTHON, "-c", RACER, str(pam_dir), str(target), SERVICE, str(RACE_SECONDS)],
        stdout=subprocess.PIPE, text=True, user=user, group=user,
        extra_groups=[] if user is not None else None)
    runs = []
    try:
        for _ in range(tries):
            runs.append(subprocess.run(
                [str(SCRIPT), "enable", "su", "--module", str(module_path), "--pam-dir",
                 str(pam_dir)], capture_output=True, text=True, timeout=60))
            if target.read_text() != TARGET:
                break
    finally:
        (pam_dir / ".stop").touch()
        swaps = int(racer.communicate(timeout=30)[0] or 0)
    assert swaps > len(runs), "the racer did not run alongside the command"
    return runs


def prepare(workdir: Path, owner: int) -> Path:
    target = workdir / "target"
    target.write_text(TARGET)
    os.chmod(target, 0o644)
    pam_dir = workdir / "pam.d"
    pam_dir.mkdir()
    (pam_dir / "su").write_text(SERVICE)
    os.chown(pam_dir, owner, owner)
    os.chown(pam_dir / "su", owner, owner)
    return pam_dir


def test_a_user_swapping_a_file_in_their_pam_dir_never_steers_roots_write(workdir, module_path):
    pam_dir = prepare(workdir, NOBODY)
    runs = race(workdir, pam_dir, module_path, 20, NOBODY)
    assert (workdir / "target").read_text() == TARGET, \
        f"root wrote the symlink's target on run {len(runs)}: {runs[-1]}"
    for run in runs:
        assert run.returncode == 2
        assert run.stderr == (f"pam-unshare: refusing to edit files in {pam_dir}: {pam_dir} is "
                              f"owned by nobody (uid {NOBODY}), not root, and whoever can "
                              f"write there could steer what root writes; nothing written\n")


def test_a_file_swapped_for_a_symlink_mid_run_is_never_written_through(workdir, module_path):
    """Root's own directory, swapped by root's racer: the O_NOFOLLOW open and the identity
    check before the rename are all that stands between the command and the target."""
    pam_dir = prepare(workdir, 0)
    started = time.monotonic()
    runs = race(workdir, pam_dir, module_path, RACE_RUNS, None)
    assert (workdir / "target").read_text() == TARGET, \
        f"root wrote the symlink's target on run {len(runs)}: {runs[-1]}"
    assert len(runs) == RACE_RUNS
    outcomes = {"written": 0, "link refused": 0, "swap noticed": 0}
    for run in runs:
        assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) <= 1, run.stderr
        if run.returncode == 0:
            outcomes["written"] += 1
        elif "su is a symbolic link (to " in run.stderr and run.returncode == 2:
            outcomes["link refused"] += 1
        else:
            assert run.returncode == 1, run.stderr
            assert "su was replaced or changed while pam-unshare was editing it" in run.stderr
            outcomes["swap noticed"] += 1
    print(f"{RACE_RUNS} runs in {time.monotonic() - started:.0f} s: {outcomes}")
    assert outcomes["link refused"] > 0  # the racer really did put the link in the way


def test_a_symlinked_service_file_is_refused_without_a_race(tmp_path, module_path):
    require_root()
    target = tmp_path / "target"
    target.write_text(TARGET)
    pam_dir = tmp_path / "pam.d"
    pam_dir.mkdir()
    (pam_dir / "su").symlink_to(target)
    result = subprocess.run([str(SCRIPT), "enable", "su", "--module", str(module_path),
                             "--pam-dir", str(pam_dir)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == (f"pam-unshare: {pam_dir / 'su'} is a symbolic link (to {target}); "
                             f"pam-unshare edits only regular files in the PAM directory itself: "
                             f"edit the file it points to, or put a copy in its place; nothing "
                             f"written\n")
    assert target.read_text() == TARGET
    assert sorted(p.name for p in pam_dir.iterdir()) == ["su"]


@pytest.mark.parametrize("mode, owner, why", [
    (0o775, (0, NOBODY), "is writable by group"),
    (0o757, (0, 0), "is writable by everyone"),
    (0o755, (NOBODY, NOBODY), f"is owned by nobody (uid {NOBODY}), not root"),
], ids=["group-writable", "world-writable", "owned-by-nobody"])
def test_a_pam_dir_someone_else_can_write_is_refused(tmp_path, module_path, mode, owner, why):
    require_root()
    pam_dir = tmp_path / "pam.d"
    pam_dir.mkdir()
    (pam_dir / "su").write_text(SERVICE)
    os.chmod(pam_dir, mode)
    os.chown(pam_dir, *owner)
    for command in (["enable", "su", "--module", str(module_path)], ["disable", "su"]):
        result = subprocess.run([str(SCRIPT), *command, "--pam-dir", str(pam_dir)],
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert result.stderr.startswith(f"pam-unshare: refusing to edit files in {pam_dir}: "
                                        f"{pam_dir} {why}")
        assert len(result.stderr.splitlines()) == 1
    assert (pam_dir / "su").read_text() == SERVICE
