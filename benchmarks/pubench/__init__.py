"""pam-unshare benchmarks: login latency with the module against without it, memory and CPU of a
session's PID 1, logout latency and 1,000 concurrent sessions. `python3 benchmarks/run.py`.

They drive the same real su, sudo and sshd as the tests, in the same kind of sandbox, with the
tests' support package (a loopback sshd, the syslog capture, the host's view of processes):
pam_unshare_testsupport, installed from tests/support.
"""
