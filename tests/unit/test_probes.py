"""The channel probe's parser and the way its secret travels (pam_unshare.probes); the probe
itself runs in real sessions in tests/isolation (test_channels.py, test_verify.py)."""

from __future__ import annotations

import subprocess

import pytest

from pam_unshare import probes

SECRET = "pu-foreign-job --password=hunter2"


def line(channel: str, verdict: str, evidence: str = "why") -> str:
    return f"{channel}\t{verdict}\t{evidence}"


def test_parse_reads_every_channel_in_order_through_noise():
    body = [line(name, probes.CLOSED) for name in reversed(probes.CHANNELS)]
    # A login banner first, a terminal's carriage returns and echoed control characters.
    output = "Welcome\r\n" + "\x04\x08\x08" + "\r\n".join(body) + "\r\n"
    output = output.replace(line("kill", probes.CLOSED), line("kill", probes.OPEN, "kill -0 7"))
    results = probes.parse(output)
    assert [r.channel for r in results] == list(probes.CHANNELS)
    assert [r.channel for r in results if r.open] == ["kill"]
    assert results[probes.CHANNELS.index("kill")].evidence == "kill -0 7"


def test_parse_names_the_channels_it_did_not_get():
    output = "\n".join(line(name, probes.CLOSED) for name in probes.CHANNELS[:3])
    with pytest.raises(probes.ProbeError, match="other-procfs, cgroup, kill"):
        probes.parse(output)


def test_parse_ignores_a_verdict_it_does_not_know():
    output = "\n".join(line(name, "maybe" if name == "ps" else probes.CLOSED)
                       for name in probes.CHANNELS)
    with pytest.raises(probes.ProbeError, match="for ps:"):
        probes.parse(output)


def test_the_secret_is_never_whole_on_a_command_line():
    command = probes.shell_command(4242, SECRET, "pu-x.scope", "/tmp/probe.sh")
    assert SECRET not in command
    environment = probes.environment(4242, SECRET, None)
    assert environment["PU_SECRET_HEAD"] + environment["PU_SECRET_TAIL"] == SECRET
    assert environment["PU_PID"] == "4242" and environment["PU_UNIT"] == ""


def test_the_script_is_posix_sh():
    """dash -n: it parses as the sh the hosts run (bash accepts more)."""
    result = subprocess.run(["sh", "-n", "-c", probes.SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
