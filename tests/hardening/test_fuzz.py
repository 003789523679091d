"""The short CI run of the option parser's fuzz target (fuzz/run; the 10-minute run is
tests/hardening/run-all): the kept corpus replays clean, and a further run finds nothing.

Also checks that the target is not blind: built against a parser with a planted bug (a rejected
argument that still changes a setting), it must find it within the same short run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_tools

from hardening.conftest import FULL, figure

ROOT = Path(__file__).resolve().parent.parent.parent
FUZZ_SECONDS = 600 if FULL else 30


def fuzzer_available() -> None:
    require_tools("clang", "make")
    probe = subprocess.run(["clang", "-fsanitize=fuzzer", "-x", "c", "-", "-o", os.devnull],
                           input="int LLVMFuzzerTestOneInput(const char *d, long n)"
                                 "{return 0;}", capture_output=True, text=True)
    if probe.returncode != 0:
        require_tools("libFuzzer (Debian: libclang-rt-14-dev)")


def test_the_option_parser_survives_fuzzing():
    if FULL and os.environ.get("PU_FUZZ_DONE"):
        pytest.skip("run-all has just fuzzed for 10 minutes")
    fuzzer_available()
    result = subprocess.run([str(ROOT / "fuzz" / "run"), str(FUZZ_SECONDS)], capture_output=True,
                            text=True, timeout=FUZZ_SECONDS + 300)
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"FIGURE fuzz executions: (\d+)", result.stdout)
    assert found, result.stdout
    figure("fuzz executions (pytest run)", found.group(1))
    assert int(found.group(1)) > 100_000, "the fuzzer barely ran"


def test_the_fuzz_target_finds_a_planted_bug(tmp_path):
    """A parser whose rejected "onerr=" values still switch onerr to succeed: exactly the kind
    of silent weakening the target's properties exist for."""
    fuzzer_available()
    csrc = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", csrc, ignore=shutil.ignore_patterns("build"))
    shutil.copytree(ROOT / "fuzz", tmp_path / "fuzz")
    options = csrc / "options.c"
    text = options.read_text()
    planted = text.replace(
        'if ((value = value_of(arg, "onerr")))\n',
        'if ((value = value_of(arg, "onerr")) && (opts->onerr = PU_ONERR_SUCCEED, 1))\n')
    assert planted != text, "options.c changed: update the planted bug"
    options.write_text(planted)
    build = subprocess.run(["make", "-s", "-C", str(csrc), f"O={tmp_path / 'out'}", "fuzz"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "out" / "fuzz" / "options_fuzz"), "-max_total_time=60",
                          f"-artifact_prefix={tmp_path}/", str(tmp_path / "fuzz" / "corpus" /
                                                                 "options")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0, "the planted bug went unnoticed"
    assert "deadly signal" in run.stderr or "ERROR" in run.stderr, run.stderr[-2000:]
