"""Other procfs instances (issue 13, item 2): a session inherits the host's whole mount table, so a
procfs mounted anywhere but /proc (a chroot's /proc, a bind mount of /proc) would list every host
process inside it. The module covers each with the session's own procfs at login.

A procfs the host mounts later reaches live sessions through propagation=slave (the default, so
that automounts keep appearing); propagation=private closes that too. Both are pinned here.

The "host" is this test's sandbox mount namespace, where su starts its sessions.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

SECRET = "hunter2"


@pytest.fixture
def other_procfs() -> Iterator[Path]:
    """A chroot-style procfs, a bind mount of /proc, and a directory with a blank in its name
    holding a procfs (mountinfo escapes it)."""
    root = Path(tempfile.mkdtemp(prefix="pu-procfs-"))
    root.chmod(0o755)
    points = [root / "chroot" / "proc", root / "bind", root / "odd name" / "proc"]
    for point in points:
        point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(points[0])], check=True)
    subprocess.run(["mount", "--bind", "/proc", str(points[1])], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(points[2])], check=True)
    try:
        yield root
    finally:
        for point in points:
            subprocess.run(["umount", "-l", str(point)], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def probe(directory: Path, foreign: int) -> str:
    """What a session sees through the procfs at DIRECTORY: the foreign command line (if it can
    read it) and how many processes it lists."""
    where = shlex.quote(str(directory))
    return (f"cat {where}/{foreign}/cmdline 2>/dev/null | tr '\\0' ' '; echo; "
            f"ls {where} | grep -c '^[0-9]'")


@pytest.mark.parametrize("which", ["chroot/proc", "bind", "odd name/proc"])
def test_a_procfs_mounted_elsewhere_shows_only_the_session(pam_sandbox, users, foreign_process,
                                                           other_procfs, which):
    directory = other_procfs / which
    host_view = subprocess.run(["bash", "-c", probe(directory, foreign_process)],
                               capture_output=True, text=True)
    assert SECRET in host_view.stdout, "control: the host sees the foreign process there"
    result = subprocess.run(["su", users.alice, "-c", probe(directory, foreign_process)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    cmdline, count = result.stdout.splitlines()
    assert SECRET not in cmdline, f"LEAK through the procfs at {which}: {cmdline!r}"
    assert 0 < int(count) < 10, f"{which} lists {count} processes inside the session"


def held_probe(pam_sandbox, users, directory: Path, foreign: int, *options: str) -> str:
    """A session that starts, waits while the host mounts a procfs at DIRECTORY, then probes it.
    DIRECTORY's parent is made a shared mount first, as / is on every systemd host (this test's
    sandbox has a private /)."""
    shared = directory.parent
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    subprocess.run(["mount", "--make-shared", str(shared)], check=True)
    with pam_sandbox.options(*options):
        session = subprocess.Popen(
            ["su", users.alice, "-c", f"echo READY; read _; {probe(directory, foreign)}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert session.stdout is not None and session.stdout.readline().strip() == "READY"
            subprocess.run(["mount", "-t", "proc", "proc", str(directory)], check=True)
            out, _ = session.communicate("go\n", timeout=60)
        finally:
            if session.poll() is None:
                session.kill()
                session.wait()
            subprocess.run(["umount", "-l", str(directory)], check=False)
            subprocess.run(["umount", "-l", str(shared)], check=False)
    return out


def test_a_procfs_mounted_during_a_session_stays_out_with_propagation_private(
        pam_sandbox, users, foreign_process, other_procfs):
    late = other_procfs / "shared" / "late"
    late.mkdir(parents=True)
    out = held_probe(pam_sandbox, users, late, foreign_process, "propagation=private")
    assert SECRET not in out
    assert out.splitlines()[-1] == "0", f"the late procfs reached the session: {out!r}"


def test_a_procfs_mounted_during_a_session_reaches_it_with_propagation_slave(
        pam_sandbox, users, foreign_process, other_procfs):
    """The documented trade-off of the default: host mounts (automounted homes, and a procfs too)
    propagate into live sessions. If this starts failing, the README's Limits are out of date."""
    late = other_procfs / "shared" / "late"
    late.mkdir(parents=True)
    out = held_probe(pam_sandbox, users, late, foreign_process)
    assert SECRET in out
