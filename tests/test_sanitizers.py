"""The C under AddressSanitizer and UndefinedBehaviorSanitizer.

The module is built with both and driven through real PAM transactions by pamtester (open and
close a session, the exempt path, malformed options, the failure paths); the option parser is
driven with hostile input through a small front end. Any sanitizer report fails the test.

Leak checking covers the parser only: LeakSanitizer stops the world with a helper task cloned
from the checked process, and once a session is open that process's children belong to the
session's PID namespace, from where the helper cannot trace its parent.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import PamSandbox, require, require_root, require_tools

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SANITIZER_REPORT = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehavior")
SERVICE = "pam-unshare-asan"


@dataclass(frozen=True)
class SanitizedBuild:
    module: Path
    options_check: Path
    preload: str


@pytest.fixture(scope="session")
def sanitized_build(tmp_path_factory: pytest.TempPathFactory) -> SanitizedBuild:
    require_tools("make", "cc", "ldd")
    out = tmp_path_factory.mktemp("asan")
    build = subprocess.run(["make", "-C", str(CSRC), "SANITIZE=1", f"O={out}", "all",
                            "options-check"], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    linked = subprocess.run(["ldd", str(out / "pam_unshare.so")], capture_output=True,
                            text=True, check=True).stdout
    runtimes = re.findall(r"(/\S+/lib(?:asan|ubsan)\.so\S*)", linked)
    require(any("libasan" in path for path in runtimes), "the ASan runtime is not installed")
    # ASan must come first in the process: pamtester itself is not instrumented.
    return SanitizedBuild(out / "pam_unshare.so", out / "options-check", ":".join(runtimes))


def _sanitizer_env(build: SanitizedBuild, detect_leaks: bool) -> Dict[str, str]:
    return {
        **os.environ,
        "LD_PRELOAD": build.preload,
        "ASAN_OPTIONS": f"detect_leaks={int(detect_leaks)}:halt_on_error=1:exitcode=99",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=99",
    }


def _pamtester(pam_sandbox: PamSandbox, build: SanitizedBuild, options: List[str],
               user: str, wrapper: List[str] = ()) -> subprocess.CompletedProcess:
    pam_sandbox.sandbox.write_service(SERVICE, f"session required {build.module} "
                                               f"{' '.join(options)}\n")
    return subprocess.run(
        [*wrapper, "pamtester", "-v", SERVICE, user, "open_session", "close_session"],
        capture_output=True, text=True, env=_sanitizer_env(build, detect_leaks=False),
        timeout=120,
    )


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["debug", "on_logout=kill"],
        ["propagation=private", "debug"],
        ["scope=user", "debug"],
        ["exempt_users=pu_alice"],
        ["exempt_groups=pu_exempt,nosuchgroup", "only_groups=pu_only"],
        ["frobnicate", "onerr=", "exempt_users=" + "x" * 300, "only_groups=", "=", ""],
    ],
    ids=["defaults", "kill", "private", "user-scope", "exempt-user", "groups", "malformed"],
)
def test_a_pam_transaction_is_clean_under_the_sanitizers(pam_sandbox, sanitized_build, users,
                                                          options):
    require_root()
    require_tools("pamtester")
    result = _pamtester(pam_sandbox, sanitized_build, options, users.alice)
    assert not SANITIZER_REPORT.search(result.stderr), result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert "session has successfully been closed" in result.stdout + result.stderr


@pytest.mark.parametrize("onerr, expected_rc", [("onerr=fail", 1), ("onerr=succeed", 0)])
def test_the_failure_path_is_clean_under_the_sanitizers(pam_sandbox, sanitized_build, users,
                                                        onerr, expected_rc):
    require_root()
    require_tools("pamtester", "capsh")
    result = _pamtester(pam_sandbox, sanitized_build, [onerr], users.alice,
                        wrapper=["capsh", "--drop=cap_sys_admin", "--", "-c",
                                 'exec "$0" "$@"'])
    assert not SANITIZER_REPORT.search(result.stderr), result.stderr
    assert result.returncode == expected_rc, result.stdout + result.stderr


HOSTILE_ARGUMENTS = [
    "",
    "=",
    "==",
    "onerr==fail",
    "exempt_users=" + ",".join(["a"] * 5000),
    "exempt_users=" + "," * 5000,
    "exempt_users=" + "a" * 100000,
    "only_groups=" + "".join(chr(c) for c in range(1, 256)),
    "exempt_groups=" + "\u00e9\u4e2d",
    "debug" * 1000,
    "on_logout=" + "k" * 70000,
]


def test_the_parser_is_clean_under_the_sanitizers_with_hostile_input(sanitized_build):
    result = subprocess.run([str(sanitized_build.options_check), *HOSTILE_ARGUMENTS],
                            capture_output=True, text=True, errors="replace",
                            env=_sanitizer_env(sanitized_build, detect_leaks=True), timeout=60)
    assert not SANITIZER_REPORT.search(result.stderr), result.stderr
    assert result.returncode == 1  # some arguments rejected, no crash
    decisions = [line for line in result.stdout.splitlines()
                 if line.startswith(("accepted", "rejected"))]
    assert len(decisions) == len(HOSTILE_ARGUMENTS)
    # Control characters and non-ASCII names never get in; 5,000 valid names do.
    assert "only_groups=(unset)" in result.stdout
    assert "exempt_groups=(unset)" in result.stdout
    assert "exempt_users=" + ",".join(["a"] * 5000) + "\n" in result.stdout
