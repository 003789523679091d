"""A real OpenSSH server on a loopback port, started inside the test sandbox."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, List


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Sshd:
    def __init__(self, workdir: Path, users: Iterable[str],
                 wrapper: List[str] | None = None) -> None:
        """WRAPPER prefixes the sshd command line (e.g. capsh dropping a capability)."""
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        self.client_key = workdir / "id_ed25519"
        host_key = workdir / "host_ed25519"
        for key in (host_key, self.client_key):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                               check=True)
        authorized = workdir / "authorized"
        authorized.mkdir(exist_ok=True)
        public = (workdir / "id_ed25519.pub").read_text()
        for user in users:
            (authorized / user).write_text(public)
        config = workdir / f"sshd_config.{self.port}"
        config.write_text(
            "\n".join([
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {workdir}/sshd.{self.port}.pid",
                "UsePAM yes",
                f"AuthorizedKeysFile {authorized}/%u",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                "",
            ])
        )
        # sshd's privilege separation directory; Debian's service creates it at start.
        self._made_privsep = not os.path.isdir("/run/sshd")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.log = workdir / f"sshd.{self.port}.log"
        self._process = subprocess.Popen(
            [*(wrapper or []), "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - the server owns it until stop()
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 30 s")

    def command(self, user: str, remote: str, tty: bool = False) -> List[str]:
        return [
            "ssh", "-F", "/dev/null", "-i", str(self.client_key), "-p", str(self.port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            *(["-tt"] if tty else ["-T"]),
            f"{user}@127.0.0.1", remote,
        ]

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._made_privsep:
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass
