"""pam-unshare benchmarks: login latency with the module against without it, memory and CPU of a
session's PID 1, logout latency and 1,000 concurrent sessions. `python3 benchmarks/run.py`.

The helpers of the test suite (a loopback sshd, host process inspection) are imported from
tests/, which this package appends to sys.path: the benchmarks drive the same real su, sudo and
sshd the tests do, in the same kind of sandbox.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
# Appended, not prepended: the installed pam_unshare (with its built module) must win over the
# source tree, and nothing in tests/ may shadow a library.
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))
