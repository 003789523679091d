"""What the tests and the benchmarks share: entries (the ways a user gets a session), a loopback
sshd, the syslog capture, the host's view of processes (hostprocs), the Debian package build.

A package of its own, installed (editable) into .venv by `scripts/bootstrap --test`, so that
tests and benchmarks import it by name, with no sys.path edits.
"""
