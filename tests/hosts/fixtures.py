"""pytest fixtures for the test hosts in this package.

Use them from a test module with ``from hosts.fixtures import systemd_container``
(pytest puts tests/ on sys.path, as for ``helpers``).

Missing prerequisites skip the tests with a clear reason on a developer's
machine, but fail them when the environment variable ``CI`` is set: CI must
never silently skip a host.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .systemd_container import (
    DEFAULT_CACHE_DIR,
    SystemdContainer,
    build_rootfs,
)

CACHE_ENV = "PAM_UNSHARE_TEST_CACHE"


def unavailable(reason: str) -> None:
    """Skip, or fail when running in CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, refusing to skip: {reason}", pytrace=False)
    pytest.skip(reason)


def systemd_container_missing() -> str | None:
    """Why the systemd container host cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the systemd-nspawn test host needs root"
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"the systemd-nspawn test host needs {tool!r} (not found in PATH)"
    return None


@pytest.fixture(scope="session")
def systemd_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdContainer]:
    """A Debian 12 container booted with systemd as PID 1 (shared /), for the session.

    Cache directory for the root filesystem: $PAM_UNSHARE_TEST_CACHE or
    /var/cache/pam-unshare-tests.
    """
    reason = systemd_container_missing()
    if reason:
        unavailable(reason)
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    t0 = time.monotonic()
    rootfs = build_rootfs(cache)
    built = time.monotonic() - t0
    log = tmp_path_factory.mktemp("systemd-container") / "nspawn.log"
    with SystemdContainer(rootfs, log_path=log) as container:
        print(
            f"\nsystemd container {container.name}: rootfs ready in {built:.1f}s, "
            f"booted in {container.boot_seconds:.1f}s ({container.state}), "
            f"log {log}",
            file=sys.stderr,
        )
        yield container
