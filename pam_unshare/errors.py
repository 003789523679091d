"""The errors the command line turns into one line on stderr and an exit status."""

from __future__ import annotations


class Refused(Exception):
    """The request is invalid (a typo in an option, an unknown service, a file that does not
    parse, a change that would break logins): nothing was changed. Exit status 2."""

    exit_status = 2


class Failed(Exception):
    """A valid request could not be carried out. Exit status 1."""

    exit_status = 1


class NeedsRoot(Failed):
    """The command needs root; the message says why."""
