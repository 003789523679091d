"""Concurrent `pam-unshare enable` / `disable` runs on one PAM directory: every reader at every
moment sees a whole file (the old one or a new one), and the end state is one of the runs'."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import List

from pam_unshare import pamd

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pam.d"
SCRIPT = Path(sys.executable).parent / "pam-unshare"
SERVICES = ("su", "sudo", "sshd")
RUNS = 12


def _watch(pam_dir: Path, stop: threading.Event, seen: List[str]) -> None:
    """Reads the files over and over; records anything that is not a whole, valid file."""
    originals = {s: pamd.read(FIXTURES / s) for s in SERVICES}
    while not stop.is_set():
        for service in SERVICES:
            text = pamd.read(pam_dir / service)
            try:
                ours = pamd.parse(text).ours()
            except pamd.ParseError as error:
                seen.append(f"{service}: {error}")
                continue
            if len(ours) > 1 or pamd.without_session_line(text) != originals[service]:
                seen.append(f"{service}: corrupt:\n{text}")


def test_concurrent_runs_never_corrupt_a_file(pam_dir, module_path):
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    stop = threading.Event()
    problems: List[str] = []
    watcher = threading.Thread(target=_watch, args=(pam_dir, stop, problems))
    watcher.start()
    try:
        runs = []
        for index in range(RUNS):
            command = (["disable", *SERVICES] if index % 4 == 3 else
                       ["enable", *SERVICES, "--module", str(module_path),
                        "-o", f"exempt_users=root,user{index}"])
            runs.append(subprocess.Popen([str(SCRIPT), *command, "--pam-dir", str(pam_dir)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
        results = [(run.wait(timeout=60), run.stderr.read()) for run in runs]
        for run in runs:
            run.stdout.close()
            run.stderr.close()
    finally:
        stop.set()
        watcher.join()
    assert [status for status, _ in results] == [0] * RUNS, results
    assert problems == []
    # Each file ended in the state one of the runs left it in, with at most one line of ours.
    candidates = [f"exempt_users=root,user{i}" for i in range(RUNS) if i % 4 != 3]
    for service in SERVICES:
        text = pamd.read(pam_dir / service)
        ours = pamd.parse(text).ours()
        assert len(ours) <= 1
        if ours:
            assert ours[0].args[0] in candidates
    leftovers = [p.name for p in pam_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
