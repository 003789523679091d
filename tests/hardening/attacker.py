"""What the attacks of tests/hardening/test_attack_*.py share: an ordinary user's shell, su and
sudo that this user may run (as they may on any host where they know their own password or hold a
sudo rule), and the session inits of a user as the product itself finds them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Sequence

from conftest import PamSandbox
from pam_unshare_testsupport import devlog

from pam_unshare import linux, pamd, proc, sessions

SUDOERS_DIR = "/etc/sudoers.d"
FUSE_MAJOR, FUSE_MINOR = 10, 229


def module_lines_since(pam_sandbox: PamSandbox, mark: int, settle: float = 0.3) -> List[str]:
    """The module's syslog lines since MARK (pam_sandbox.syslog.mark())."""
    return devlog.module_lines(pam_sandbox.syslog.lines(mark, settle=settle))


def as_user(uid: int, command: str) -> List[str]:
    """A root command line that runs shell COMMAND as UID with no other group and no
    capability: an ordinary local user."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--", "bash", "-c", command]


def run_as(uid: int, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(as_user(uid, command), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd="/")


@contextlib.contextmanager
def su_for_users(pam_sandbox: PamSandbox) -> Iterator[None]:
    """su that an ordinary user may run without a terminal: pam_permit first in its auth stack
    (in the sandbox's copy), as if the user typed their password. The session stack, where the
    module runs, is the real one."""
    path = pam_sandbox.sandbox.pam_dir / "su"
    before = pamd.read(path)
    pamd.write(path, "auth sufficient pam_permit.so\n" + before, backup=False)
    try:
        yield
    finally:
        pamd.write(path, pamd.read(path).replace("auth sufficient pam_permit.so\n", "", 1),
                   backup=False)


@contextlib.contextmanager
def sudo_rule(rule: str) -> Iterator[None]:
    """A sudoers.d holding RULE, bind-mounted over the real one in the sandbox's mount namespace
    (this process and what it starts see it; the host never does)."""
    with tempfile.TemporaryDirectory(prefix="pu-sudoers-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "pu-attack"
        path.write_text(rule + "\n")
        os.chmod(path, 0o440)
        subprocess.run(["mount", "--bind", directory, SUDOERS_DIR], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", SUDOERS_DIR], check=True)


def inits_of(uid: int) -> List[sessions.Session]:
    """The live sessions whose processes belong to UID, as `pam-unshare sessions` finds them."""
    return [s for s in sessions.list_sessions()
            if any(m.process.uid == uid for m in s.members[1:])]


def init_of_user(uid: int) -> proc.Process | None:
    """PID 1 of the namespace a process of UID runs in, by what it looks like (no check of who
    made it): for attacks on a real init, where is_session_init's own checks are under test."""
    table = proc.processes()
    namespaces = {p.namespace for p in table if p.uid == uid and len(p.nspid) > 1}
    return next((p for p in table if p.looks_like_session_init and p.namespace in namespaces),
                None)


def wait_for(predicate, timeout: float = 20, what: str = "condition"):  # noqa: ANN001, ANN201
    """Polls PREDICATE until it returns something true; fails with WHAT after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of PID."""
    stat = proc.read_stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return stat.cpu_ticks / proc.CLOCK_TICKS


def lowest_free_fd(pid: int) -> int:
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


def prlimit_nofile(pid: int, limit: int) -> None:
    """Sets the soft RLIMIT_NOFILE of PID (the hard one stays: raising it back needs
    CAP_SYS_RESOURCE, which some hosts, this test machine among them, do not give root)."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)


def holding_session(argv: Sequence[str]) -> subprocess.Popen:
    """A login that stays open until its stdin is closed; it prints READY once inside."""
    return subprocess.Popen([*argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def hold_command() -> str:
    return "echo READY; read _"


def su_holding(user: str, uid: int | None = None) -> subprocess.Popen:
    """su USER with a session held open, run by root or (UID) by that ordinary user."""
    command = shlex.join(["su", user, "-c", hold_command()])
    argv = as_user(uid, command) if uid is not None else ["bash", "-c", command]
    process = holding_session(argv)
    line = process.stdout.readline() if process.stdout else ""
    if line.strip() != "READY":
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"the held session did not start: {line!r} {err!r}")
    return process


def release(process: subprocess.Popen) -> None:
    if process.stdin:
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def fuse_for_users() -> Iterator[None]:
    """/dev/fuse open to every user, as Debian's fuse3 makes it with udev, in this test's private
    mount namespace only (the machine's node stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="pu-fuse-dev-") as directory:
        node = Path(directory) / "fuse"
        os.mknod(node, 0o666 | 0o020000, os.makedev(FUSE_MAJOR, FUSE_MINOR))
        os.chmod(node, 0o666)
        linux.bind(str(node), "/dev/fuse")
        try:
            yield
        finally:
            subprocess.run(["umount", "/dev/fuse"], check=True)
