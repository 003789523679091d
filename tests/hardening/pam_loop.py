"""A long-lived process that runs PAM sessions one after another through python-pam.

usage: pam_loop.py SERVICE USER COUNT SHELL_COMMAND
Prints one JSON line per session ("session": ...) and per sample of the parent's own descriptors
and memory ("sample": ...), as it goes: the parent keeps no record, so that its memory measures
PAM and the module, not the test.

The parent authenticates once and keeps its PAM handle for the whole run; each session is opened
and closed by a forked child, as a daemon would do it (a process that opened a session has joined
its mount namespace and its children's PID namespace, so it cannot open the next one). The child
counts its descriptors before pam_open_session, after it and after pam_close_session, runs
SHELL_COMMAND as the user in between, and reports over a pipe. The parent samples its own open
descriptors and VmRSS as it goes: neither may grow.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
import syslog

import pam

from pam_unshare import forked


def open_fds() -> int:
    """Descriptors open in this process. Not through /proc/self, which a process that opened a
    session no longer has."""
    count = 0
    for fd in range(4096):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def one_session(handle: pam.PamAuthenticator, user: str, command: str, report: int) -> int:
    """In the child: open, run COMMAND as USER, close; writes the counts and the command's
    output to REPORT."""
    # The syslog connection the module's error lines would open, opened now: it is libc's, kept
    # for the life of the process, and must not pass for a leak.
    syslog.openlog(logoption=syslog.LOG_NDELAY)
    before = open_fds()
    rc = handle.open_session()
    opened = open_fds()
    output = b""
    status = -1
    if rc == 0:
        entry = pwd.getpwnam(user)
        read_end, write_end = os.pipe()
        worker = os.fork()
        if worker == 0:
            try:
                os.close(read_end)
                os.dup2(write_end, 1)
                os.initgroups(user, entry.pw_gid)
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
                os.execv("/bin/sh", ["sh", "-c", command])
            finally:
                os._exit(127)
        os.close(write_end)
        chunks = []
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        output = b"".join(chunks)
        status = os.waitstatus_to_exitcode(os.waitpid(worker, 0)[1])
        handle.close_session()
    closed = open_fds()
    line = json.dumps({"open_rc": rc, "fds_before": before, "fds_open": opened,
                       "fds_closed": closed, "status": status,
                       "output": output.decode(errors="replace")})
    os.write(report, line.encode() + b"\n")
    return 0


def main() -> int:
    service, user, count, command = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    handle = pam.PamAuthenticator()
    if not handle.authenticate(user, "", service=service, call_end=False):
        print(json.dumps({"error": f"authenticate: {handle.reason}"}))
        return 3
    for index in range(count):
        report, status = forked.run(lambda out: one_session(handle, user, command, out))
        text = report.decode(errors="replace").strip()
        print(json.dumps({"session": json.loads(text) if text else {"open_rc": -1},
                          "child": status}), flush=True)
        if index % max(1, count // 20) == 0 or index == count - 1:
            print(json.dumps({"sample": {"index": index, "fds": open_fds(),
                                         "rss_kib": rss_kib()}}), flush=True)
    handle.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
