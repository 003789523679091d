"""What the isolation suite needs from the host it runs against, whatever that host is.

A Target bundles the testinfra host with the test users, the entry paths as they run there, a
process of another user to hide, a view of the host's processes, the module's log, and a way to
run a block with other module options:

- LocalTarget: this machine (--hosts=local://), inside the suite's PAM sandbox (tests/conftest.py):
  the module is enabled in a private copy of /etc/pam.d and nothing here changes for real.
- RemoteTarget: any host provisioned by hosts/provision-test-host (the systemd container and the
  VM of hosts/tiers.py, a Vagrant box, an Ansible inventory). The suite copies its helpers there,
  rewrites the options on the module's lines for a block and puts the files back afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shlex
import sys
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Protocol

import pam as python_pam
from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.entries import (
    HELPER_FILES,
    HELPERS,
    TEST_SERVICE,
    Entry,
    make_entries,
    remote_tools,
)
from testinfra.host import Host

import pam_unshare
from isolation.hostview import HostView

HOSTPROCS = Path(hostprocs.__file__).resolve()
REMOTE_HELPERS = "/usr/local/lib/pam-unshare-tests"
# hostprocs.py and pam_options.py run on a remote host with its python3, next to a copy of the
# product modules they import (this tree's, whatever version the host has installed): in a
# directory of their own, so that the entries' PYTHONPATH (REMOTE_HELPERS) sees no partial
# pam_unshare.
REMOTE_TOOLS = f"{REMOTE_HELPERS}/tools"
PRODUCT = Path(pam_unshare.__file__).resolve().parent
PRODUCT_MODULES = ("__init__.py", "linux.py", "proc.py", "pamd.py", "atomic.py", "trust.py",
                   "errors.py")
USERS = ("pu_alice", "pu_bob", "pu_carol", "pu_dave")
FOREIGN_SECRET = "pu-foreign-job --password=hunter2"


def rounds(target: Target, count: int) -> int:
    """COUNT scaled for TARGET: loops of hundreds of logins shrink on a slow (emulated) host."""
    return max(1, round(count * target.scale))


class Target(Protocol):
    name: str
    scale: float  # loop sizes relative to the full suite (rounds())
    host: Host
    entries: Dict[str, Entry]
    view: HostView
    foreign_pid: int

    def options(self, *options: str) -> contextlib.AbstractContextManager[None]: ...

    def log_mark(self) -> str: ...

    def log_lines(self, mark: str) -> List[str]:
        """The log lines since MARK as "<priority>message"."""
        ...


class LocalTarget:
    name = "local"
    scale = 1.0

    def __init__(self, host: Host, pam_sandbox, entries: Dict[str, Entry],  # noqa: ANN001
                 foreign_pid: int) -> None:
        self.host = host
        self.sandbox = pam_sandbox
        self.entries = entries
        self.foreign_pid = foreign_pid
        self.view = HostView(host, sys.executable, str(HOSTPROCS))

    def options(self, *options: str) -> contextlib.AbstractContextManager[None]:
        return self.sandbox.options(*options)

    def log_mark(self) -> str:
        return str(self.sandbox.syslog.mark())

    def log_lines(self, mark: str) -> List[str]:
        return self.sandbox.syslog.lines(int(mark))


def _tarball(files: Dict[str, Path]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, path in files.items():
            tar.add(str(path), arcname=name,
                    filter=lambda info: None if "__pycache__" in info.name else info)
    return base64.b64encode(buffer.getvalue()).decode()


class RemoteTarget:
    def __init__(self, host: Host, name: str, scale: float = 1.0) -> None:
        self.host = host
        self.name = name
        self.scale = scale
        self.check_provisioned()
        self.upload_helpers()
        self.entries = make_entries(remote_tools(REMOTE_HELPERS))
        self.view = HostView(host, "python3", f"{REMOTE_TOOLS}/hostprocs.py")
        self.foreign_pid = self.start_foreign_process()

    def sh(self, command: str) -> str:
        result = self.host.run(command)
        assert result.rc == 0, (f"{self.name}: `{command[:200]}` failed (rc {result.rc}): "
                                f"{result.stderr[-2000:]}")
        return result.stdout

    def check_provisioned(self) -> None:
        missing = []
        if self.host.run("id -u").stdout.strip() != "0":
            missing.append("a root login for the controller")
        for user in USERS:
            if not self.host.user(user).exists:
                missing.append(f"user {user}")
        for path in ("/root/.ssh/pu_inner",):
            if not self.host.file(path).exists:
                missing.append(path)
        if not self.host.exists("python3"):
            missing.append("python3")
        if self.host.run("grep -qs pam_unshare.so /etc/pam.d/common-session").rc != 0:
            missing.append("pam_unshare in /etc/pam.d/common-session")
        assert not missing, (f"{self.name} is not a provisioned test host "
                             f"(tests/hosts/provision-test-host): missing {', '.join(missing)}")

    def upload_helpers(self) -> None:
        files = {name: HELPERS / name for name in HELPER_FILES}
        files["tools/pam_options.py"] = HELPERS / "pam_options.py"
        files["tools/hostprocs.py"] = HOSTPROCS
        files.update({f"tools/pam_unshare/{name}": PRODUCT / name for name in PRODUCT_MODULES})
        files["pam"] = Path(python_pam.__file__).resolve().parent
        self.sh(f"mkdir -p {REMOTE_HELPERS} && echo {_tarball(files)} | base64 -d | "
                f"tar -xz -C {REMOTE_HELPERS}")
        service = ("auth required pam_permit.so\naccount required pam_permit.so\n"
                   "session required pam_unshare.so\n")
        self.sh(f"printf %s {shlex.quote(service)} > /etc/pam.d/{TEST_SERVICE}")

    def start_foreign_process(self) -> int:
        """Another user's process outside any session, with a secret on its command line."""
        job = f"exec -a {shlex.quote(FOREIGN_SECRET)} sleep 7200"
        pid = self.sh(
            "setsid setpriv --reuid=pu_bob --regid=pu_bob --clear-groups -- "
            f"bash -c {shlex.quote(job)} </dev/null >/dev/null 2>&1 & echo $!")
        return int(pid.strip())

    def stop(self) -> None:
        self.host.run(f"kill {self.foreign_pid}")

    @contextlib.contextmanager
    def options(self, *options: str) -> Iterator[None]:
        helper = f"python3 {REMOTE_TOOLS}/pam_options.py"
        try:
            self.sh(f"{helper} set {shlex.join(options)}")
            yield
        finally:
            self.sh(f"{helper} restore")

    def log_mark(self) -> str:
        last = self.sh("journalctl --sync; journalctl -q -n 1 -o json")
        return json.loads(last)["__CURSOR"] if last.strip() else ""

    def log_lines(self, mark: str) -> List[str]:
        after = f"--after-cursor={shlex.quote(mark)}" if mark else ""
        output = self.sh(f"journalctl --sync; journalctl -q -o json {after}")
        lines = []
        for row in output.splitlines():
            entry = json.loads(row)
            message = entry.get("MESSAGE")
            if isinstance(message, str):
                lines.append(f"<{entry.get('PRIORITY', '6')}>{message}")
        return lines
