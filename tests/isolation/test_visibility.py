"""Inside a session only the session's processes exist: another user's process is absent from
ps, from /proc and from kill -0, and PID 1 is our init. One test per way of logging in."""

from __future__ import annotations

import pytest
from helpers.entries import ENTRY_NAMES

PROBE = (
    "ps -e -o pid=,user=,args=; echo @@; "
    "if [ -e /proc/{pid} ]; then echo proc:present; else echo proc:absent; fi; "
    "kill -0 {pid} 2>&1 | grep -q 'No such process' && echo kill:esrch || echo kill:other; "
    "echo comm:$(cat /proc/1/comm); "
    "echo args:$(tr '\\0' ' ' < /proc/1/cmdline)"
)


@pytest.mark.parametrize("entry_name", ENTRY_NAMES)
def test_only_the_session_is_visible(host, entries, users, foreign_process, entry_name):
    entry = entries[entry_name]
    result = host.run(entry.command(users.alice, PROBE.format(pid=foreign_process)))
    assert result.rc == 0, f"{entry_name}: {result.stderr}"
    listing, _, facts = result.stdout.partition("@@")
    assert "pu-foreign-job" not in listing, f"{entry_name} shows another user's job"
    assert "hunter2" not in result.stdout
    rows = [line.split(None, 2) for line in listing.strip().splitlines()]
    assert rows[0][0] == "1" and rows[0][2].startswith("pam_unshare-init"), rows
    assert len(rows) <= 10, f"{entry_name} sees {len(rows)} processes: {listing}"
    assert "proc:absent" in facts, f"{entry_name}: /proc/{foreign_process} exists"
    assert "kill:esrch" in facts, f"{entry_name}: kill -0 reaches PID {foreign_process}"
    assert "comm:pam_unshare\n" in facts.replace("\r", "")
    assert "args:pam_unshare-init linger" in facts
