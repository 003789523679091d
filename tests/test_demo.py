"""`pam-unshare demo`, the README's main job: isolation shown, host files untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import HOST_ROOT, require_root, require_tools

from pam_unshare.proc import read_stat

HOST_ETC = HOST_ROOT / "etc"


def _fingerprint() -> dict:
    files = sorted(p for p in (HOST_ETC / "pam.d").rglob("*") if p.is_file())
    files += [HOST_ETC / name for name in ("passwd", "group", "shadow", "gshadow")]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def test_demo_shows_isolation_and_leaves_the_host_untouched():
    require_root()
    require_tools("su", "ps")
    script = Path(sys.executable).parent / "pam-unshare"
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    before = _fingerprint()
    result = subprocess.run([str(script), "demo"], capture_output=True, text=True, timeout=120)
    after = _fingerprint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "isolation holds" in result.stdout
    rows = [line.split(" | ", 1) for line in result.stdout.splitlines() if " | " in line]
    host_column = "\n".join(row[0] for row in rows)
    session_column = "\n".join(row[1] for row in rows)
    assert "--password=hunter2" in host_column
    assert "--password=hunter2" not in session_column
    assert "pam_unshare-init" in session_column
    assert before == after
    assert not any("pam_unshare" in (HOST_ETC / "pam.d" / name).read_text(errors="replace")
                   for name in ("su", "sudo", "sshd"))
    assert "pu-demo" not in (HOST_ETC / "passwd").read_text()


# --------------------------------------------------------------------------- #
# The demo copies /etc/shadow: no other user may ever read the copy; interrupted, it leaves
# nothing behind (issue 20, item 3)
# --------------------------------------------------------------------------- #

NOBODY = 65534
DEMO_PREFIX = "pam-unshare-demo-"
JOB_MARK = b"backup-tool --password=hunter2"
# Debian's (and systemd-homed's) range: throwaway accounts must not take an id from it.
RESERVED = range(60000, 65000)
# An unprivileged user's loop: every file named shadow or gshadow at most two levels below a
# demo's work directory (and the places the copies live), opened as soon as it exists.
RACER = r"""
import json, os, sys
top, stop = sys.argv[1], sys.argv[2]
attempts, dirs, leaks = 0, set(), []
while not os.path.exists(stop):
    try:
        demos = [e.path for e in os.scandir(top) if e.name.startswith("pam-unshare-demo-")]
    except OSError:
        continue
    for demo in demos:
        dirs.add(demo)
        paths = [os.path.join(demo, sub, name) for sub in ("", "accounts")
                 for name in ("shadow", "gshadow")]
        try:
            paths += [os.path.join(e.path, name) for e in os.scandir(demo) if e.is_dir()
                      for name in ("shadow", "gshadow")]
        except OSError:
            pass
        for path in paths:
            attempts += 1
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            data = os.read(fd, 64)
            os.close(fd)
            if data:
                leaks.append([path, data.split(b"\n")[0].decode(errors="replace")])
json.dump({"attempts": attempts, "dirs": len(dirs), "leaks": leaks[:5]}, sys.stdout)
"""


def _pam_unshare() -> str:
    script = Path(sys.executable).parent / "pam-unshare"
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    return str(script)


@pytest.fixture()
def demo_tmpdir() -> Iterator[Path]:
    """A TMPDIR for the demo: 0755 (the demo's users reach their homes, the racer looks in)."""
    path = Path(tempfile.mkdtemp(prefix="pu-demo-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_no_other_user_can_read_the_copy_of_shadow(demo_tmpdir: Path):
    """While the demo runs, user nobody tries to open its copies of shadow and gshadow, in a
    loop. /etc/shadow is a 52 MiB stand-in here (a bind mount in a mount namespace of the
    demo's own), so that copying it takes long enough for a race to be won when it can be:
    before the fix, the copy was created 0644 in a 0755 directory and then tightened."""
    require_root()
    require_tools("su", "ps", "unshare", "mount")
    standin = demo_tmpdir / "shadow-standin"
    real = (HOST_ETC / "shadow").read_bytes()
    filler = b"".join(b"pu-standin-%07d:$6$standin$%s:19000:0:99999:7:::\n" % (i, b"x" * 86)
                      for i in range(400_000))
    standin.write_bytes(real + filler)
    shadow_group = (HOST_ETC / "shadow").stat().st_gid
    os.chown(standin, 0, shadow_group)
    standin.chmod(0o640)
    stop = demo_tmpdir / "stop"
    racer = subprocess.Popen(["/usr/bin/python3", "-I", "-c", RACER, str(demo_tmpdir), str(stop)],
                             user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                             stdout=subprocess.PIPE, text=True)
    try:
        runs = 3
        for _ in range(runs):
            demo = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 'mount --bind "$1" /etc/shadow && exec "$2" demo', "sh", str(standin),
                 _pam_unshare()],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "TMPDIR": str(demo_tmpdir)})
            assert demo.returncode == 0, demo.stdout + demo.stderr
            assert "isolation holds" in demo.stdout
    finally:
        stop.touch()
        out, _ = racer.communicate(timeout=30)
    report = json.loads(out)
    assert report["leaks"] == [], f"user nobody read the demo's copies: {report['leaks']}"
    # The race was run: the racer saw every demo's work directory and tried to open the copies.
    assert report["dirs"] == runs and report["attempts"] > 0, report


def _job_pids(demo: int) -> List[int]:
    """Children of DEMO whose command line is the demo's background job."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if cmdline.startswith(JOB_MARK) and fields[0] != "Z" and int(fields[1]) == demo:
                pids.append(int(entry.name))
    return pids


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M)[1])


def _gone(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is None or stat.state == "Z"


# The parent's death: the process that started the demo is killed outright.
PARENT_DIES = "parent killed"
# It starts the demo and waits for it, printing its pid first.
PARENT = "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); " \
    "p.wait()"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP", PARENT_DIES])
def test_a_stopped_demo_leaves_no_copies_and_no_job(demo_tmpdir: Path, tmp_path: Path, how: str):
    """The demo is stopped while its temporary files and the other user's job exist (a `ps`
    first in PATH holds it there: it records its pid, then sleeps): afterwards neither is left,
    and the job ran under a throwaway uid outside Debian's reserved range."""
    require_root()
    require_tools("su", "ps")
    stub = tmp_path / "bin"
    stub.mkdir()
    ready = tmp_path / "ps-started"
    (stub / "ps").write_text(f'#!/bin/sh\necho $$ > {ready}.tmp && mv {ready}.tmp {ready}\n'
                             "exec sleep 120\n")
    (stub / "ps").chmod(0o755)
    env = {**os.environ, "TMPDIR": str(demo_tmpdir), "PATH": f"{stub}:{os.environ['PATH']}"}
    argv = [_pam_unshare(), "demo"]
    if how == PARENT_DIES:
        argv = [sys.executable, "-P", "-c", PARENT, *argv]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    jobs: List[int] = []
    ps_pid = 0
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, f"the demo ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the demo never reached its `ps`"
            time.sleep(0.02)
        ps_pid = int(ready.read_text())
        demo_pid = int(proc.stdout.readline()) if how == PARENT_DIES else proc.pid
        jobs = _job_pids(demo_pid)
        assert len(jobs) == 1, f"the demo's background job is not running: {jobs}"
        job_uid = _uid(jobs[0])
        assert [p.name for p in demo_tmpdir.iterdir()][0].startswith(DEMO_PREFIX)
        if how == PARENT_DIES:
            proc.kill()
            proc.wait()
            deadline = time.monotonic() + 30
            while not _gone(demo_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _gone(demo_pid), "the demo outlived its parent by 30 s"
        else:
            proc.send_signal(getattr(signal, how))
            proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while not _gone(jobs[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {"job": [pid for pid in jobs if not _gone(pid)],
                "files": sorted(p.name for p in demo_tmpdir.iterdir())}
        assert left == {"job": [], "files": []}, f"after {how} the demo left {left}"
        if how != PARENT_DIES:
            status = 128 + getattr(signal, how)
            assert proc.returncode == status, \
                f"exit status {proc.returncode} after {how}, not {status}"
        assert job_uid not in RESERVED, f"the job ran as uid {job_uid}, a reserved one"
    finally:
        # Whatever a broken demo left: its job, its `ps`, the demo itself.
        for pid in [*jobs, ps_pid]:
            if pid and not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for leftover in demo_tmpdir.glob(f"{DEMO_PREFIX}*"):
            shutil.rmtree(leftover)


NSS_PROBE = "from pam_unshare.sandbox import free_id; print(free_id())"


def test_throwaway_ids_are_free_in_nss_and_outside_reserved_ranges(tmp_path: Path):
    """free_id asks NSS: with a user at uid 65536 and a group at gid 65537 (stand-in passwd and
    group, bind-mounted in a mount namespace of its own), the first free id is 65538; and
    never one of 60000-64999."""
    require_root()
    require_tools("unshare", "mount")
    passwd = tmp_path / "passwd"
    group = tmp_path / "group"
    passwd.write_text((HOST_ETC / "passwd").read_text()
                      + "pu-taken:x:65536:100::/nonexistent:/usr/sbin/nologin\n")
    group.write_text((HOST_ETC / "group").read_text() + "pu-taken-group:x:65537:\n")
    for path in (passwd, group):
        path.chmod(0o644)
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && '
         'exec "$3" -P -c "$4"', "sh", str(passwd), str(group), sys.executable, NSS_PROBE],
        capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 0, res.stderr
    chosen = int(res.stdout)
    assert chosen not in RESERVED, f"free_id chose {chosen}, in Debian's reserved range"
    assert chosen == 65538, f"free_id chose {chosen}: uid 65536 and gid 65537 are taken"
