"""run0 (systemd 256 and later) on hosts that have it (Debian 13: pu-container-trixie).

PID 1 opens run0's PAM session (service systemd-run0; Debian 13 ships no such file, so PAM reads
`other`, which includes common-session) and then execs the command in the same process: the
module, which puts the caller's future children in a new PID namespace, cannot cover it (the
same model as systemd-user in DESIGN.md), and with its line in the stack run0 fails outright
("Cannot fork", "mount -t proc proc /proc"). The closure is systemd's own: a drop-in for the
transient services run0 makes (run-p<PID>-i<N>.service: the prefix drop-in run-.service.d) with
PrivatePIDs=yes (systemd 257) and ProtectProc=invisible, and a systemd-run0 PAM file without
the module. This test installs that closure for its duration and runs every probe through run0.
"""

from __future__ import annotations

import shlex
from typing import Iterator

import pytest

from isolation.targets import Target
from isolation.test_visibility import leak_report, probe_script, run_probes

DROP_IN_DIR = "/etc/systemd/system/run-.service.d"
DROP_IN = f"{DROP_IN_DIR}/50-pam-unshare-tests.conf"
DROP_IN_TEXT = "[Service]\nPrivatePIDs=yes\nProtectProc=invisible\n"
PAM_FILE = "/etc/pam.d/systemd-run0"
# PAM's `other` with the non-interactive session stack, which has no pam_unshare line.
PAM_TEXT = ("@include common-auth\n@include common-account\n@include common-password\n"
            "@include common-session-noninteractive\n")


@pytest.fixture(scope="module")
def run0_closure(target: Target) -> Iterator[None]:
    host = target.host
    assert host.run(f"test ! -e {DROP_IN} && test ! -e {PAM_FILE}").rc == 0, \
        f"{target.name}: {DROP_IN} or {PAM_FILE} exists already"
    try:
        assert host.run(
            f"mkdir -p {DROP_IN_DIR} && printf %s {shlex.quote(DROP_IN_TEXT)} > {DROP_IN} && "
            f"printf %s {shlex.quote(PAM_TEXT)} > {PAM_FILE} && systemctl daemon-reload").rc == 0
        yield
    finally:
        host.run(f"rm -f {DROP_IN} {PAM_FILE}; rmdir {DROP_IN_DIR}; systemctl daemon-reload")


def test_run0_sees_nothing_of_another_user(target, run0_closure):
    listing = target.host.run("run0 -u pu_alice ps -e -o user=,args=")
    assert listing.rc == 0, f"{target.name}: run0 failed: {listing.stderr}"
    users = {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
    assert users == {"pu_alice"}, f"{target.name}: run0 -u pu_alice sees {listing.stdout}"
    command = f"run0 -u pu_alice sh -c {shlex.quote(probe_script(target.foreign_pid))}"
    verdicts = run_probes(target, command)
    report = leak_report(target, "run0", verdicts)
    assert not report, report
