"""Opens a PAM session with python-pam, runs a command in it as the user, closes the session.

usage: pam_session.py SERVICE USER SHELL_COMMAND
Exit status: the command's, or 3 (authentication), 4 (open_session) on PAM failure.
"""

from __future__ import annotations

import os
import pwd
import sys

import pam


def main() -> int:
    service, user, command = sys.argv[1:4]
    handle = pam.PamAuthenticator()
    if not handle.authenticate(user, "", service=service, call_end=False):
        print(f"pam_session: authenticate: {handle.reason}", file=sys.stderr)
        return 3
    rc = handle.open_session()
    if rc != 0:
        print(f"pam_session: open_session: {handle.reason} ({rc})", file=sys.stderr)
        handle.end()
        return 4
    entry = pwd.getpwnam(user)
    child = os.fork()
    if child == 0:
        try:
            os.initgroups(user, entry.pw_gid)
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.chdir(entry.pw_dir)
            os.execv("/bin/sh", ["sh", "-c", command])
        finally:
            os._exit(127)
    _, status = os.waitpid(child, 0)
    handle.close_session()
    handle.end()
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
