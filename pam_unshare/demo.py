"""`pam-unshare demo`: what `ps -e` shows on the host and inside a su session, side by side.

Runs in a sandbox (a private mount namespace with throwaway copies of /etc/pam.d and the account
files): the host's PAM configuration and users are never written.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, TextIO

from pam_unshare import paths
from pam_unshare.sandbox import Sandbox, free_id

SECRET = "--password=hunter2"
PS = ["ps", "-e", "-o", "pid=,user:12=,args="]


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


def run(out: TextIO) -> DemoResult:
    module = str(paths.module_path())
    with tempfile.TemporaryDirectory(prefix="pam-unshare-demo-") as workdir:
        sandbox = Sandbox(Path(workdir))
        sandbox.enter()
        try:
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
            )
            try:
                host = subprocess.run(PS, capture_output=True, text=True, check=True)
                session = subprocess.run(["su", "pu-demo", "-c", " ".join(PS)],
                                         capture_output=True, text=True, cwd="/")
            finally:
                secret_job.kill()
                secret_job.wait()
        finally:
            sandbox.leave()
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
