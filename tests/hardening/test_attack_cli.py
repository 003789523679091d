"""Attacks on root's CLI through data a user controls (issue 14, items 1 and 7).

1. A fake session init: any user can build a process that says everything a session init says
   (comm, argv, PID 1 of a nested PID namespace) in a user namespace of their own, with their own
   file bind-mounted over a system binary there. `pam-unshare sessions` must not list it, and
   `pam-unshare enter` must refuse it and run nothing the user put in their namespace.
2. Escape sequences in command lines: `sessions --tree` prints users' command lines; they must
   reach the administrator's terminal as text.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from conftest import require_tools

from hardening.attacker import as_user, release, su_holding, wait_for
from pam_unshare import proc, sessions

CLI = Path(sys.executable).parent / "pam-unshare"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def fake_init(pam_sandbox, users) -> Iterator[tuple[int, Path]]:
    """pu_alice's fake session init: in her own user, PID and mount namespaces, with her script
    bind-mounted over /usr/bin/id. Yields its host PID and the file her script would create."""
    require_tools("unshare", "setpriv")
    uid = pam_sandbox.uids[users.alice]
    work = Path(tempfile.mkdtemp(prefix="pu-fake-init-"))
    os.chmod(work, 0o1777)
    marker = work / "ran-as-root"
    evil = work / "evil"
    evil.write_text(f"#!/bin/sh\nid -u > {marker} 2>/dev/null || echo ran > {marker}\n"
                    f"echo 'uid=0(root) gid=0(root)'\n")
    os.chmod(evil, 0o755)
    fake = work / "pam_unshare"  # comm is the file's name
    fake.write_bytes(Path("/bin/sleep").read_bytes())
    os.chmod(fake, 0o755)
    inner = (f"mount --bind {evil} /usr/bin/id && "
             f"exec -a pam_unshare-init {fake} 600")
    process = subprocess.Popen(
        as_user(uid, shlex.join(["unshare", "-Urpfm", "--mount-proc", "bash", "-c", inner])),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def find() -> int | None:
            for process_ in proc.processes():
                if process_.looks_like_session_init and process_.uid == uid:
                    return process_.pid
            return None
        pid = wait_for(find, what="the fake init to start")
        yield pid, marker
    finally:
        process.kill()
        process.wait()
        subprocess.run(["pkill", "-KILL", "-u", str(uid), "-x", "pam_unshare"], check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_a_fake_init_is_no_session(fake_init):
    pid, _ = fake_init
    listed = json.loads(cli("sessions", "--json").stdout or "[]")
    assert pid not in [session["pid"] for session in listed], (
        f"pam-unshare sessions lists a user's fake init (PID {pid}) as a session")


def test_enter_refuses_a_fake_init_and_runs_nothing_of_the_user(fake_init):
    pid, marker = fake_init
    result = cli("enter", str(pid), "--", "id")
    assert not marker.exists(), (
        f"root ran the user's script through pam-unshare enter: {marker.read_text()!r}")
    assert result.returncode != 0, result.stdout
    assert "no live session has id or PID" in result.stderr, result.stderr


def test_enter_refuses_a_fake_init_even_when_asked_by_its_own_record(fake_init):
    """Past the listing: a Session record made from the fake (as a race between listing and
    entering could hand over) is refused by enter itself."""
    pid, marker = fake_init
    fake = proc.read_process(pid)
    assert fake is not None and fake.looks_like_session_init and not fake.is_session_init
    record = sessions.Session(init=fake, user="pu_alice", service="unknown", caller=None,
                              started=time.time(), on_logout="linger", scope="session",
                              members=(), logins=())
    with pytest.raises(sessions.Refused, match="is not a session of pam_unshare"):
        sessions.enter(record, ["id"])
    assert not marker.exists()


def test_a_real_session_is_still_listed_and_entered(pam_sandbox, users):
    held = su_holding(users.alice)
    try:
        listed = wait_for(lambda: [s for s in json.loads(cli("sessions", "--json").stdout)
                                   if s["user"] == users.alice], what="the session listed")
        result = cli("enter", str(listed[0]["pid"]), "--", "cat", "/proc/1/comm")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "pam_unshare"
    finally:
        release(held)


def test_session_tree_escapes_what_a_user_put_in_a_command_line(pam_sandbox, users):
    hostile = "evil\x1b]0;owned\x07\x1b[2J\nroot 1 fake-line\u202e"
    command = f"exec -a {shlex.quote(hostile)} sleep 60 & echo READY; read _; kill %1"
    held = subprocess.Popen(["su", users.alice, "-c", command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "READY"
        out = wait_for(lambda: (lambda r: r.stdout if "evil" in r.stdout else None)(
            cli("sessions", "--tree")), what="the hostile command in the tree")
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, repr(out)
        assert "\nroot 1 fake-line" not in out, repr(out)
        assert "evil\\x1b]0;owned\\x07\\x1b[2J\\nroot 1 fake-line\\u202e" in out, repr(out)
    finally:
        release(held)
