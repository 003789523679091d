"""The channel matrix: every channel of pam_unshare.probes (ps, /proc, other procfs mounts,
cgroup.procs, kill -0, systemctl status, loginctl, GetUnitProcesses, systemd-run --user) x every
entry path of the host, against the foreign process of the target (another user's, outside any
session, with a secret on its command line).

The probe is the one `pam-unshare verify` runs, copied to the host as a file. One login per
entry path runs every channel; root, outside any session, is the control and must see the
process through ps and /proc, or the probe proves nothing.
"""

from __future__ import annotations

import base64
from typing import Dict, List

import pytest
from pam_unshare_testsupport.entries import ENTRY_NAMES

from isolation.targets import FOREIGN_SECRET, REMOTE_HELPERS, LocalTarget, Target
from pam_unshare import probes

SCRIPT_NAME = "pu-channels.sh"
# The negative control costs a login per host; on the emulated VM it shows nothing new
# (tests/isolation/conftest.py deselects it there).
NATIVE_SPEED_ONLY = ("test_a_channel_left_open_is_named",)
_uploaded: Dict[str, str] = {}


def probe_path(target: Target) -> str:
    """The probe script on TARGET, readable by the test users (written once per host)."""
    if target.name in _uploaded:
        return _uploaded[target.name]
    if isinstance(target, LocalTarget):
        path = target.sandbox.workdir / SCRIPT_NAME  # 0755 directory: pu_alice reads it
        path.write_text(probes.SCRIPT)
        path.chmod(0o644)
        where = str(path)
    else:
        where = f"{REMOTE_HELPERS}/{SCRIPT_NAME}"
        encoded = base64.b64encode(probes.SCRIPT.encode()).decode()
        result = target.host.run(f"mkdir -p {REMOTE_HELPERS} && echo {encoded} | base64 -d > "
                                 f"{where} && chmod 644 {where}")
        assert result.rc == 0, f"{target.name}: upload failed: {result.stderr}"
    _uploaded[target.name] = where
    return where


def foreign_unit(target: Target) -> str | None:
    """The systemd unit holding the foreign process (its cgroup's last part), so that the
    GetUnitProcesses channel has something to ask for; None where systemd is not PID 1."""
    result = target.host.run(f"[ -d /run/systemd/system ] && cat /proc/{target.foreign_pid}"
                             f"/cgroup")
    if result.rc != 0:
        return None
    for line in result.stdout.splitlines():
        if line.startswith("0::"):
            unit = line.rsplit("/", 1)[-1]
            if unit.endswith((".service", ".scope")):
                return unit
    return None


def probe_command(target: Target) -> str:
    return probes.shell_command(target.foreign_pid, FOREIGN_SECRET, foreign_unit(target),
                                probe_path(target))


def run_probe(target: Target, command: str, where: str) -> List[probes.ChannelResult]:
    result = target.host.run(command)
    try:
        return probes.parse(result.stdout)
    except probes.ProbeError as error:
        pytest.fail(f"{target.name} {where}: rc {result.rc}: {error}; stderr "
                    f"{result.stderr[-1000:]!r}")


def test_control_root_sees_the_foreign_process(target):
    command = probe_command(target)
    assert FOREIGN_SECRET not in command  # the probe's own command line must not count
    results = run_probe(target, command, "control")
    verdicts = {r.channel: r.verdict for r in results}
    blind = [name for name in probes.CONTROL_CHANNELS if verdicts[name] != probes.OPEN]
    assert blind == [], (f"control cannot see the foreign process on {target.name} through "
                         f"{', '.join(blind)}: the probe is broken: {results}")


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_no_channel_shows_the_foreign_process(target, entry_name):
    command = target.entries[entry_name].command("pu_alice", probe_command(target))
    results = run_probe(target, command, entry_name)
    leaks = [f"LEAK on {target.name} through {entry_name} via {r.channel}: {r.evidence}"
             for r in results if r.open]
    assert leaks == [], "\n".join(leaks)


def test_a_channel_left_open_is_named(target):
    """Negative control: the same login with the module exempting the user; every channel
    that lists processes must report the leak, by name."""
    with target.options("exempt_users=pu_alice"):
        command = target.entries["su"].command("pu_alice", probe_command(target))
        results = run_probe(target, command, "su, exempt")
    opened = {r.channel for r in results if r.open}
    # kill -0 on another user's process: EPERM, which says that it exists.
    assert {"ps", "proc-list", "proc-files", "kill"} <= opened, (target.name, results)
