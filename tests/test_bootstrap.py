"""scripts/bootstrap: interrupted, it still removes the /usr/sbin/policy-rc.d it wrote.

The real script runs, as root, in a mount namespace of its own where /usr/sbin is an empty tmpfs
(so this machine's /usr/sbin is never written, even when the script is broken), with `apt-get`
first in PATH being a stub: `update` returns at once, `install` records that it started, then
sleeps. The script is then stopped the ways it is in practice (Ctrl-C, a hung-up terminal, a
TERM to its process group, or a TERM to the script alone while apt-get runs) and the policy file
must be gone, the script ended by that same signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_root, require_tools

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "scripts" / "bootstrap"
POLICY = "usr/sbin/policy-rc.d"
# apt-get for the script: "install" says it started (its pid) and sleeps STUB_SLEEP seconds.
APT_STUB = """#!/bin/sh
case "$1" in
    install) echo $$ > "{ready}.tmp" && mv "{ready}.tmp" "{ready}"; exec sleep {sleep} ;;
    *) exit 0 ;;
esac
"""


@pytest.fixture()
def private_sbin() -> Iterator[int]:
    """The pid of a process whose mount namespace has an empty tmpfs on /usr/sbin; killed on
    the way out, which ends the namespace."""
    require_root()
    require_tools("unshare", "nsenter", "mount")
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         "mount -t tmpfs -o mode=755 tmpfs /usr/sbin && echo ok && exec sleep 600"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ok\n", \
            "could not mount a tmpfs on /usr/sbin in a new mount namespace"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _policy_exists(holder: int) -> bool:
    # /proc/PID/root resolves paths through that process's mounts: the tmpfs.
    return Path(f"/proc/{holder}/root", POLICY).exists()


@pytest.mark.parametrize("how", ["SIGINT to the group", "SIGHUP to the group",
                                 "SIGTERM to the group", "SIGTERM to the script"])
def test_interrupted_bootstrap_removes_policy_rc_d(private_sbin: int, tmp_path: Path, how: str):
    signame, target = how.split(" to the ")
    signum = getattr(signal, signame)
    alone = target == "script"
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    ready = tmp_path / "apt-get-install-started"
    # Alone, the signal waits for apt-get (the shell defers its trap): keep that short.
    (stub_dir / "apt-get").write_text(APT_STUB.format(ready=ready, sleep=2 if alone else 120))
    (stub_dir / "apt-get").chmod(0o755)
    assert not _policy_exists(private_sbin)
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}"}
    script = subprocess.Popen(
        ["nsenter", f"--target={private_sbin}", "--mount", "--", "/bin/sh", "-c",
         'exec "$0" --test', str(BOOTSTRAP)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    stub = 0
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert script.poll() is None, f"bootstrap ended early: {script.communicate()[1]!r}"
            assert time.monotonic() < deadline, "bootstrap never reached apt-get install"
            time.sleep(0.02)
        stub = int(ready.read_text())
        assert _policy_exists(private_sbin), "bootstrap did not write policy-rc.d"
        if alone:
            script.send_signal(signum)
        else:
            os.killpg(script.pid, signum)
        script.wait(timeout=30)
        assert not _policy_exists(private_sbin), \
            f"bootstrap left /usr/sbin/policy-rc.d behind after {how}"
        assert script.returncode == -signum, \
            f"bootstrap's status after {how}: {script.returncode}, not killed by {signame}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        script.wait()
        if stub:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stub, signal.SIGKILL)
