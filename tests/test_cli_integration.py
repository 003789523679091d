"""The command line end to end, as root, with real PAM: install the module, enable su in the
sandboxed /etc/pam.d, open a real su session, find it with `sessions`, look inside with `enter`,
disable su and get the file's bytes back.

The suite's sandbox (conftest.pam_sandbox) already has su enabled; this test disables it first,
which must give back the host's own /etc/pam.d/su byte for byte, and restores the sandbox's
state at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from conftest import HOST_ROOT, require_root, require_tools
from isolation.probes import LIST_PROCESSES, parse_processes
from pam_unshare_testsupport import hostprocs

SCRIPT = Path(sys.executable).parent / "pam-unshare"
SU_FILE = Path("/etc/pam.d/su")
MARK = "@@listed@@"


def pam_unshare(*args: str) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def ok(*args: str) -> str:
    result = pam_unshare(*args)
    assert result.returncode == 0, f"pam-unshare {' '.join(args)}: {result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def read_until_mark(session: subprocess.Popen) -> List[Tuple[int, str]]:
    """What the session's own ps printed (su exits, closing the pipe, if the session fails)."""
    lines = []
    for line in session.stdout:
        if line.strip() == MARK:
            break
        lines.append(line)
    return parse_processes("".join(lines))


def end_session(tag: str) -> None:
    """Kills the namespace of every process tagged TAG (its PID 1 first: the kernel kills the
    rest), whatever point the test reached."""
    for process in hostprocs.tagged(tag):
        namespace = hostprocs.pid_namespace(process.pid)
        if namespace is not None and process.nested:
            hostprocs.kill_namespace(namespace, hostprocs.now_ticks())


def without_ps(rows: List[Tuple[int, str]]) -> List[int]:
    return sorted(pid for pid, comm in rows if comm != "ps")


def test_install_enable_see_enter_and_disable_a_real_su_session(pam_sandbox, module_path,
                                                                  tmp_path):
    require_root()
    require_tools("su", "ps")
    alice = pam_sandbox.users.alice
    session = None
    tag = hostprocs.new_tag()
    try:
        # The sandbox wrote its line with the same code as `enable`: disabling restores the
        # host's file exactly.
        ok("disable", "su", "--pam-dir", "/etc/pam.d")
        before = SU_FILE.read_bytes()
        assert before == (HOST_ROOT / "etc" / "pam.d" / "su").read_bytes()

        dest = tmp_path / "security"
        dest.mkdir()
        module = dest / "pam_unshare.so"
        assert str(module) in ok("install", "--dest", str(dest))
        info = os.stat(module)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o644)
        assert module.read_bytes() == module_path.read_bytes()

        ok("enable", "su", "--pam-dir", "/etc/pam.d", "--module", str(module))
        assert SU_FILE.read_text().count("pam_unshare.so") == 1
        ok("check", "--pam-dir", "/etc/pam.d")
        facts = json.loads(ok("status", "--json", "--pam-dir", "/etc/pam.d"))
        assert {"service": "su", "module": str(module)}.items() <= next(
            e for e in facts["enabled"] if e["service"] == "su").items()

        session = subprocess.Popen(
            ["su", alice, "-c",
             f"{LIST_PROCESSES}; echo {MARK}; {hostprocs.tag_assignment(tag)} exec sleep 120"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        inside = read_until_mark(session)
        sleepers = hostprocs.wait_for(lambda: hostprocs.tagged(tag), timeout=30)
        assert len(sleepers) == 1, f"no session: {session.stderr.read() if session else ''}"
        sleeper = sleepers[0]
        namespace = hostprocs.pid_namespace(sleeper.pid)
        assert namespace is not None and sleeper.nested

        listed = json.loads(ok("sessions", "--json"))
        ours = [entry for entry in listed if entry["id"] == namespace]
        assert len(ours) == 1, listed
        entry = ours[0]
        assert entry["user"] == alice
        assert entry["service"] == "su"
        assert entry["caller"]["comm"] == "su"
        assert entry["processes"] >= 2
        assert entry["on_logout"] == "linger"
        init = hostprocs.read_process(entry["pid"])
        assert init is not None and init.is_namespace_init and init.comm == "pam_unshare"
        members = {member["pid"]: member for member in entry["members"]}
        assert members[entry["pid"]]["session_pid"] == 1
        assert members[sleeper.pid]["user"] == alice
        assert members[sleeper.pid]["args"] == "sleep 120"

        table = ok("sessions")
        assert any(line.split()[:4] == [str(namespace), str(entry["pid"]), alice, "su"]
                   for line in table.splitlines())
        assert f"{sleeper.pid} [{members[sleeper.pid]['session_pid']}] {alice}: sleep 120" in \
            ok("sessions", "--tree")

        for key in (str(entry["pid"]), str(entry["id"])):
            entered = parse_processes(ok("enter", key, "--", *LIST_PROCESSES.split()))
            assert entered[0] == (1, "pam_unshare")
            # The session's processes and nothing else: no pytest, no host process.
            assert {comm for _, comm in entered} == {"pam_unshare", "sleep", "ps"}, entered
            # The same PIDs the session saw from inside (its shell has become the sleep).
            assert without_ps(entered) == without_ps(inside), (entered, inside)
            assert (members[sleeper.pid]["session_pid"], "sleep") in entered
        assert pam_unshare("enter", str(entry["pid"]), "--", "sh", "-c", "exit 3").returncode == 3

        end_session(tag)
        session.wait(timeout=30)
        gone = hostprocs.wait_until_none(lambda: [
            e for e in json.loads(ok("sessions", "--json")) if e["id"] == namespace])
        assert gone == []

        ok("disable", "su", "--pam-dir", "/etc/pam.d")
        assert SU_FILE.read_bytes() == before
    finally:
        end_session(tag)
        if session is not None:
            session.kill()
            session.wait(timeout=30)
            session.stdout.close()
            session.stderr.close()
        pam_sandbox.apply(())  # the sandbox's own line back, for the other tests
