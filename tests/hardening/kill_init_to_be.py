"""Run as an ordinary user: logs in through su ATTEMPTS times and, during each login, sends
SIGKILL to the children of that su just above su's PID (the clone child that becomes the
session's PID 1 is born there, with the user's real uid inherited from setuid su, until it takes
uid 0). Two CPU-bound loops of the user's keep the machine busy, so that the new child waits to
run. Prints one JSON line: how many logins ended namespaced, refused, or with the command run
outside a namespace (the module's init-to-be killed and onerr=succeed taking over).

Only children of su with effective uid 0 are signalled: the init-to-be is one (born of setuid
su), and the session su forks for the user is one only until it takes the user's ids, after
which its death would just end the user's own login (a run that kills every shell proves
nothing: every login refused). "windows" counts the logins in which such a child was seen,
"hits" the signals the kernel delivered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

SPAN = 48  # PIDs above su's that are tried


def parent_and_euid(pid: int) -> tuple[int, int]:
    """The parent's PID and the effective uid of PID, or (0, -1) if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            fields = dict(line.split(b":", 1) for line in status.read().splitlines())
        return int(fields[b"PPid"]), int(fields[b"Uid"].split()[1])
    except (OSError, ValueError, IndexError, KeyError):
        return 0, -1


def main() -> None:
    attempts, user, init_comm = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    mine = {os.getpid(), *(process.pid for process in busy)}
    tally = {"namespaced": 0, "refused": 0, "outside": 0, "windows": 0, "hits": 0}
    try:
        for _ in range(attempts):
            login = subprocess.Popen(["su", user, "-c", "cat /proc/1/comm"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
            targets = [pid for pid in range(login.pid + 1, login.pid + SPAN) if pid not in mine]
            window_seen = False
            while login.poll() is None:
                for pid in targets:
                    # Only children of this su: other processes of the user's stay untouched.
                    parent, euid = parent_and_euid(pid)
                    if parent != login.pid or euid != 0:
                        continue
                    window_seen = True
                    try:
                        os.kill(pid, signal.SIGKILL)
                        tally["hits"] += 1
                    except OSError:
                        pass
            login.wait()
            tally["windows"] += window_seen
            assert login.stdout is not None
            comm = login.stdout.read().decode(errors="replace").strip()
            if login.returncode != 0 or not comm:
                tally["refused"] += 1
            elif comm == init_comm:
                tally["namespaced"] += 1
            else:
                tally["outside"] += 1
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(json.dumps(tally))


if __name__ == "__main__":
    main()
