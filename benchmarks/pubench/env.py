"""The benchmark's sandbox: a private mount namespace with throwaway copies of /etc/pam.d and the
account files (pam_unshare.sandbox, as in the tests), a benchmark user, an sshd on a loopback
port, and the module switched on and off by rewriting the copies of the su, sudo and sshd files.

"off" is each file exactly as the host has it; "on" is the same file with our session line (an
absolute module path) as its last session line. The host's /etc/pam.d is never written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Set, Tuple

from pam_unshare_testsupport import hostprocs
from pam_unshare_testsupport.devlog import DIE_WITH_PARENT, SyslogCapture
from pam_unshare_testsupport.sshd import Sshd

from pam_unshare import pamd, paths, proc
from pam_unshare.sandbox import Sandbox, free_id
from pubench import procs

SERVICES = ("su", "sudo", "sshd")
USER = "pu_bench"
# Away from the test suite's 62000 block: its runs may share this machine with ours.
FIRST_UID = 64100
ENTRIES = ("su", "sudo", "ssh")


class BenchEnv:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pam-unshare-bench-"))
        os.chmod(self.workdir, 0o755)  # the user reaches its home, sshd its authorized keys
        # A copy of the built module, so that every run of the benchmark loads the same file even
        # if the package is reinstalled meanwhile (a reinstall removes it for a moment: su then
        # fails with "PAM unable to dlopen", which is not the module's failure).
        self.installed_module = str(paths.module_path())
        self.module = str(self.workdir / paths.MODULE_NAME)
        shutil.copyfile(self.installed_module, self.module)
        os.chmod(self.module, 0o644)
        self.sandbox = Sandbox(self.workdir)
        self.sandbox.enter()
        # A /dev/log of our own inside the sandbox, as the tests have: the module's failure lines
        # end up in the report, and su, sudo and sshd log as they do on a host with a syslog.
        self.syslog: SyslogCapture | None = SyslogCapture(self.workdir, few_mounts=True,
                                                           own_session=True)
        self.uid = free_id(FIRST_UID)
        self.sandbox.add_user(USER, self.uid)
        self._off_text = {service: (self.sandbox.pam_dir / service).read_text(encoding="utf-8")
                          for service in SERVICES}
        self.mode: Tuple[bool, Tuple[str, ...]] | None = None
        self.sshd: Sshd | None = None
        # For cleanup, even after Ctrl-C: what we started and where.
        self.popens: List[subprocess.Popen] = []
        self.tags: Set[str] = set()
        self.namespaces: Dict[int, int] = {}  # PID namespace -> now_ticks() when first seen
        self.own_namespace = hostprocs.pid_namespace(os.getpid())

    def start_sshd(self) -> Sshd:
        self.sshd = Sshd(self.workdir / "sshd", [USER], wrapper=DIE_WITH_PARENT)
        return self.sshd

    def set_mode(self, on: bool, options: Sequence[str] = ()) -> None:
        """Rewrites the sandbox's su, sudo and sshd files with (on) or without (off) our line."""
        wanted = (on, tuple(options))
        if self.mode == wanted:
            return
        for service, text in self._off_text.items():
            if on:
                text = pamd.with_session_line(text, pamd.session_line(self.module, options))
            self.sandbox.write_service(service, text)
        self.mode = wanted

    def sshd_pid(self) -> int | None:
        """The listening sshd's PID (from its pid file), whose CPU the benchmark counts as its
        own."""
        if self.sshd is None:
            return None
        try:
            return int((self.sshd.workdir / f"sshd.{self.sshd.port}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def entry_argv(self, entry: str, command: str) -> List[str]:
        """The root command line that runs the shell COMMAND as the benchmark user."""
        if entry == "su":
            return ["su", USER, "-c", command]
        if entry == "sudo":
            return ["sudo", "-u", USER, "--", "sh", "-c", command]
        if entry == "ssh":
            assert self.sshd is not None
            return self.sshd.command(USER, command)
        raise ValueError(entry)

    def new_tag(self) -> str:
        tag = hostprocs.new_tag()
        self.tags.add(tag)
        return tag

    def remember_namespace(self, namespace: int) -> None:
        """Records a session's PID namespace for cleanup; never the one we run in (a session
        without the module lives there)."""
        if namespace != self.own_namespace:
            self.namespaces.setdefault(namespace, hostprocs.now_ticks())

    def log_mark(self) -> int:
        return self.syslog.mark() if self.syslog else 0

    def module_log(self, since: int, limit: int = 20) -> List[str]:
        """Lines the module logged since the mark SINCE (it logs only failures), at most LIMIT."""
        if self.syslog is None:
            return []
        lines = [line for line in self.syslog.lines(since, settle=0.3) if "pam_unshare" in line]
        return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit
                                else [])

    def reap(self) -> int:
        """Reaps the zombies re-parented to us (see procs.become_subreaper)."""
        return procs.reap_orphans(process.pid for process in self.popens
                                  if process.returncode is None)

    def leftovers(self) -> List[hostprocs.HostProcess]:
        """Running processes of this run: tagged ones, and members of a namespace we saw
        (started no later than we saw it: a dead namespace's number goes to the next new one).
        One pass over /proc, however many sessions and namespaces there were."""
        needles = [f"{hostprocs.TAG_VARIABLE}={tag}".encode() for tag in self.tags]
        found = []
        for process in hostprocs.processes():
            if process.zombie:
                continue
            if process.nested:
                namespace = hostprocs.pid_namespace(process.pid)
                seen = self.namespaces.get(namespace) if namespace is not None else None
                if seen is not None and process.start <= seen:
                    found.append(process)
                    continue
            environment = proc.environ(process.pid)
            if any(needle in environment for needle in needles):
                found.append(process)
        return found

    def kill_everything(self) -> None:
        """Ends every session this run started: the callers, every process carrying one of our
        tags, every process of a namespace we saw; then reaps what was re-parented to us."""
        for process in self.popens:
            if process.poll() is None:
                process.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = self.leftovers()
            for process in left:
                hostprocs.kill(process)
            for process in self.popens:
                if process.poll() is None:
                    try:
                        process.wait(timeout=0.01)
                    except subprocess.TimeoutExpired:
                        pass
            self.reap()
            if not left and all(process.poll() is not None for process in self.popens):
                break
            time.sleep(0.1)
        self.popens = [process for process in self.popens if process.poll() is None]

    def close(self) -> None:
        """Cleanup; safe to call twice, and immune to a second Ctrl-C."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.kill_everything()
            if self.sshd is not None:
                self.sshd.stop()
                self.sshd = None
            if self.syslog is not None:
                self.syslog.stop()
                self.syslog = None
            self.sandbox.leave()
            shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def host_pam_mentions_module() -> List[str]:
    """Lines of the host's /etc/pam.d naming our module (must be none). Call outside the sandbox."""
    found = []
    for root, _, files in os.walk("/etc/pam.d"):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    found += [f"{path}: {line.strip()}" for line in handle
                              if pamd.MODULE_TOKEN.removesuffix(".so") in line]
            except OSError:
                pass
    return found
