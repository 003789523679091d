"""Reading a session's view: what the probes in the isolation tests run inside a session."""

from __future__ import annotations

from typing import Dict, List, Tuple

# Prints one "pid comm" line per process the session can see, from its own /proc.
LIST_PROCESSES = "ps -e -o pid=,comm="


def parse_processes(output: str) -> List[Tuple[int, str]]:
    rows = []
    for line in output.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0].isdigit():
            rows.append((int(fields[0]), fields[1].strip()))
    return rows


def by_pid(output: str) -> Dict[int, str]:
    return dict(parse_processes(output))
