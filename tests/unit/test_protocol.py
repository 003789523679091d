"""The module and the init agree on csrc/init/protocol.h; the CLI reads the same words from
pam_unshare.proc. This keeps the two spellings one."""

from __future__ import annotations

import re
from pathlib import Path

from pam_unshare import proc

HEADER = Path(__file__).resolve().parents[2] / "csrc" / "init" / "protocol.h"


def test_the_python_side_of_the_protocol_is_the_header():
    text = HEADER.read_text(encoding="utf-8")
    defined = dict(re.findall(r'^#define (PU_INIT_\w+) "([^"]*)"', text, re.MULTILINE))
    assert defined == {
        "PU_INIT_ARGV0": proc.INIT_ARGV0,
        "PU_INIT_COMM": proc.INIT_COMM,
        "PU_INIT_LINGER": proc.INIT_LINGER,
        "PU_INIT_KILL": proc.INIT_KILL,
        "PU_INIT_USER": proc.INIT_USER,
    }
