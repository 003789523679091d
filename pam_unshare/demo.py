"""`pam-unshare demo`: what `ps -e` shows on the host and inside a su session, side by side.

Runs in a sandbox (a private mount namespace with throwaway copies of /etc/pam.d and the account
files): the host's PAM configuration and users are never written.

Interrupted (SIGINT, SIGTERM, SIGHUP) or orphaned (its parent dies: PR_SET_PDEATHSIG turns that
into SIGTERM), it still removes its work directory, with the copies of shadow and gshadow, and
ends the other user's background job; that job also dies with the demo if the demo is killed
outright (its own parent-death signal is SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator, List, TextIO

from pam_unshare import linux, paths
from pam_unshare.sandbox import Sandbox, free_id

SECRET = "--password=hunter2"
PS = ["ps", "-e", "-o", "pid=,user:12=,args="]
# Signals that end the demo through its clean-up path, with exit status 128 + the signal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
ALL_STOP_SIGNALS = {signal.SIGINT, *STOP_SIGNALS}


@dataclass
class DemoResult:
    host_lines: List[str]
    session_lines: List[str]
    secret_on_host: bool
    secret_in_session: bool
    session_rc: int

    @property
    def isolated(self) -> bool:
        return self.session_rc == 0 and self.secret_on_host and not self.secret_in_session


def _side_by_side(left: List[str], right: List[str], out: TextIO, width: int = 60) -> None:
    out.write(f"{'on the host: ps -e':<{width}} | inside `su USER`: ps -e\n")
    out.write(f"{'-' * width}-+-{'-' * width}\n")
    for i in range(max(len(left), len(right))):
        a = left[i][:width] if i < len(left) else ""
        b = right[i][:width] if i < len(right) else ""
        out.write(f"{a:<{width}} | {b}\n")


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit (SIGINT already raises KeyboardInterrupt), so every
    `finally` runs; the demo also gets SIGTERM if its parent dies."""
    parent = os.getppid()
    old = {signum: signal.signal(signum, _exit_on_signal) for signum in STOP_SIGNALS}
    try:
        linux.set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            raise SystemExit(128 + signal.SIGTERM)
        yield
    finally:
        linux.set_parent_death_signal(0)
        for signum, handler in old.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Holds back the stop signals while a clean-up runs: one arriving then takes effect after."""
    signal.pthread_sigmask(signal.SIG_BLOCK, ALL_STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ALL_STOP_SIGNALS)


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the demo dies, however it dies. It runs after
    the change of user, which would clear it."""
    parent = os.getpid()

    def preexec() -> None:
        linux.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def run(out: TextIO) -> DemoResult:
    with _stop_signals_raise():
        return _run(out)


def _run(out: TextIO) -> DemoResult:
    module = str(paths.module_path())
    workdir = tempfile.mkdtemp(prefix="pam-unshare-demo-")
    try:
        sandbox = Sandbox(Path(workdir))
        try:
            sandbox.enter()
            user_uid = free_id()
            sandbox.add_user("pu-demo", user_uid)
            other_uid = free_id(user_uid + 1)
            sandbox.add_user("pu-demo-other", other_uid)
            sandbox.enable(["su"], module)
            # Another user's job whose command line carries a secret, as real ones often do.
            secret_job = subprocess.Popen(
                ["bash", "-c", f'exec -a "backup-tool {SECRET}" sleep 600'],
                user=other_uid, group=other_uid, extra_groups=[],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 - no threads here
            )
            try:
                host = subprocess.run(PS, capture_output=True, text=True, check=True)
                session = subprocess.run(["su", "pu-demo", "-c", " ".join(PS)],
                                         capture_output=True, text=True, cwd="/")
            finally:
                with _signals_deferred():
                    secret_job.kill()
                    secret_job.wait()
        finally:
            with _signals_deferred():
                sandbox.leave()
    finally:
        with _signals_deferred():
            shutil.rmtree(workdir)
    # Kernel threads say nothing about isolation and would fill the screen.
    host_all = host.stdout.splitlines()
    host_lines = [line for line in host_all if not line.split(None, 2)[-1].startswith("[")]
    session_lines = session.stdout.splitlines() or session.stderr.splitlines()
    result = DemoResult(
        host_lines=host_lines,
        session_lines=session_lines,
        secret_on_host=any(SECRET in line for line in host_lines),
        secret_in_session=any(SECRET in line for line in session.stdout.splitlines()),
        session_rc=session.returncode,
    )
    _side_by_side(host_lines, session_lines, out)
    out.write("\n")
    out.write(f"host: {len(host_lines)} processes (and {len(host_all) - len(host_lines)} "
              f"kernel threads, not shown), another user's secret visible: "
              f"{'yes' if result.secret_on_host else 'no'}\n")
    out.write(f"su session: {len(session.stdout.splitlines())} processes (exit status "
              f"{session.returncode}), the secret visible: "
              f"{'yes' if result.secret_in_session else 'no'}\n")
    out.write("isolation holds\n" if result.isolated else "ISOLATION FAILED\n")
    out.write("The host's /etc/pam.d and accounts were not touched: the demo ran in a private "
              "mount namespace on throwaway copies.\n")
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionError("pam-unshare demo must run as root (it uses su and mount "
                              "namespaces)")
