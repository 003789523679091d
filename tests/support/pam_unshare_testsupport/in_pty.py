"""Runs a command on a new pseudo-terminal, relays its output, and never types anything.

usage: in_pty.py COMMAND [ARG...]      exit status: the command's

What script(1) would do, minus its input: with stdin at EOF, script(1) writes an end-of-file
character to the terminal, and when that arrives just as the command exits, sudo 1.9.13 (Debian
12) can hang for good reading the terminal (fixed upstream in sudo commit 19a6606). A test
harness must not trigger a bug of the program under test by its own typing.
"""

from __future__ import annotations

import os
import pty
import sys


def main() -> int:
    pid, leader = pty.fork()
    if pid == 0:
        try:
            os.execvp(sys.argv[1], sys.argv[1:])
        finally:
            os._exit(127)
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every holder of the terminal has closed it
            break
        if not data:
            break
        os.write(sys.stdout.fileno(), data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
