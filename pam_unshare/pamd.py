"""PAM service files: the one place that writes our line into them."""

from __future__ import annotations

from typing import Sequence

MODULE_TOKEN = "pam_unshare.so"


def _is_ours(line: str) -> bool:
    fields = line.split()
    return len(fields) >= 3 and fields[0].lstrip("-") == "session" and (
        fields[2] == MODULE_TOKEN or fields[2].endswith("/" + MODULE_TOKEN)
    )


def _may_open_sessions(line: str) -> bool:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return False
    return fields[0].lstrip("-") == "session" or fields[0] == "@include"


def session_line(module: str = MODULE_TOKEN, options: Sequence[str] = ()) -> str:
    return " ".join(["session", "required", module, *options])


def with_session_line(text: str, line: str) -> str:
    """TEXT with LINE as our one session line, placed after every other session line and include:
    pam_loginuid and pam_systemd need /proc/self, which the caller loses once we have run."""
    lines = [existing for existing in text.splitlines() if not _is_ours(existing)]
    last = max((i for i, existing in enumerate(lines) if _may_open_sessions(existing)), default=-1)
    lines.insert(last + 1 if last >= 0 else len(lines), line)
    return "\n".join(lines) + "\n"
