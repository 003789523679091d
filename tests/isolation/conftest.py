"""The isolation suite runs against every testinfra host given with --hosts (default: this
machine, the containers and the Vagrant box, see tests/conftest.py). The suite's own hosts
(hosts/tiers.py) are booted the first time a test needs them and stopped after the last
isolation test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from conftest import require, require_root
from hosts.fixtures import CACHE_ENV
from hosts.systemd_container import DEFAULT_CACHE_DIR
from hosts.tiers import TIERS, Tier
from pam_unshare_testsupport.entries import SUDO_RS_ENTRY_NAMES
from testinfra.host import Host

from isolation.targets import LocalTarget, RemoteTarget, Target

HERE = Path(__file__).resolve().parent
# Overrides the loop sizes on remote hosts (1 = the full suite; targets.rounds()).
SCALE_ENV = "PU_ISOLATION_SCALE"
TIER_SUMMARIES = pytest.StashKey[List[str]]()
# 1: every entry path through every test on every tier, the VM included (see Tiers.behaviour).
FULL_ENV = "PU_ISOLATION_FULL"
# Tests of what happens around a session (logout, orphans, root's exemption), run for every entry
# path (the other exemption tests take three already).
BEHAVIOUR_TESTS = ("test_logout_is_prompt_and_leaves_nothing",
                   "test_linger_without_background_job_leaves_no_init", "test_orphans_are_reaped",
                   "test_caller_gets_eof_while_the_session_lingers",
                   "test_root_is_exempt_by_default")


def host_name(host: Host) -> str:
    """The name the host was given in --hosts (ssh://root@NAME:PORT -> NAME)."""
    spec = getattr(host.backend, "host", None)
    return str(getattr(spec, "name", spec) or host.backend.get_pytest_id())


class Tiers:
    """The suite's own hosts, booted on first use; each adds its Host entry to the ssh config
    that testinfra reads (--ssh-config, set in tests/conftest.py)."""

    def __init__(self, config: pytest.Config, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.running: Dict[str, Tier] = {}

    def ensure(self, name: str, deb: Path) -> None:
        if name in self.running:
            return
        require_root()
        ssh_config = self.config.option.ssh_config
        require(ssh_config is not None and Path(ssh_config).exists(),
                f"{name} needs the ssh config tests/conftest.py writes (--ssh-config)")
        if f"Host {name}\n" in Path(ssh_config).read_text():
            return  # brought up outside the suite (the README's `vagrant up`): use it as it is
        cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
        tier = TIERS[name](self.workdir, deb, cache)
        tier.start()
        self.running[name] = tier
        self.config.stash.setdefault(TIER_SUMMARIES, []).append(tier.summary)
        with open(ssh_config, "a") as config:
            config.write(tier.ssh_config_entry())

    def stop(self) -> None:
        for tier in self.running.values():
            tier.stop()


def pytest_itemcollected(item: pytest.Item) -> None:
    """With pytest-xdist (--dist loadgroup), all of one host's tests run on one worker: tests
    change the module's options on their host for a block, which must not overlap. Marked as
    each item is collected, before any pytest_collection_modifyitems (xdist reads the groups
    there; hook order between conftests and plugins is not something to rely on)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or HERE not in Path(item.path).resolve().parents:
        return
    host = callspec.params.get("_testinfra_host")
    if host is not None:
        item.add_marker(pytest.mark.xdist_group(host.backend.get_pytest_id()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    """Which release and kernel each booted tier ran: part of every run's record."""
    for line in config.stash.get(TIER_SUMMARIES, []):
        terminalreporter.write_line(f"tier {line}")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Deselects (never skips: they do not count) what a host does not run:
    - entry paths that only some hosts have (sudo-rs, run0), everywhere but the tiers that list
      them;
    - on a tier with behaviour_entries (the emulated VM), the logout, reaping and exemption
      tests of other entry paths, unless PU_ISOLATION_FULL=1 (every entry path still goes
      through every probe there);
    - on emulated tiers (scale < 1), unless PU_ISOLATION_FULL=1, the tests a module lists in
      NATIVE_SPEED_ONLY, which would cost minutes there and cover nothing the container does
      not."""
    full = os.environ.get(FULL_ENV) == "1"
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        entry = callspec.params.get("entry_name") if callspec else None
        host = callspec.params.get("_testinfra_host") if callspec else None
        if item.path.name == "test_run0.py":
            entry = "run0"
        tier = TIERS.get(host_name(host)) if host is not None else None
        only_native = getattr(getattr(item, "module", None), "NATIVE_SPEED_ONLY", ())
        if entry in (*SUDO_RS_ENTRY_NAMES, "run0") and host is not None \
                and entry not in getattr(tier, "extra_entries", ()):
            dropped.append(item)
            continue
        brief = getattr(tier, "behaviour_entries", None)
        if not full and brief is not None and entry is not None and entry not in brief \
                and getattr(item, "originalname", "") in BEHAVIOUR_TESTS:
            dropped.append(item)
            continue
        if not full and getattr(item, "originalname", "") in only_native and tier is not None \
                and tier.scale < 1:
            dropped.append(item)
            continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


# Package scope: the hosts stop when the last isolation test has run, so that later tests (the
# Vagrant tier's own failure tests, which start a libvirtd of their own) find the machine clear,
# and the memory of a VM is free for the rest of the run.
@pytest.fixture(scope="package")
def tiers(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Tiers]:
    registry = Tiers(pytestconfig, tmp_path_factory.mktemp("tiers"))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="package")
def remote_targets() -> Iterator[Dict[str, RemoteTarget]]:
    made: Dict[str, RemoteTarget] = {}
    try:
        yield made
    finally:
        for target in made.values():
            target.stop()


@pytest.fixture(scope="module")
def target(host: Host, request: pytest.FixtureRequest, tiers: Tiers,
           remote_targets: Dict[str, RemoteTarget]) -> Target:
    if host.backend.NAME == "local":
        return LocalTarget(host, request.getfixturevalue("pam_sandbox"),
                           request.getfixturevalue("entries"),
                           request.getfixturevalue("foreign_process"))
    name = host_name(host)
    scale = 1.0
    if name in TIERS:
        tiers.ensure(name, request.getfixturevalue("deb"))
        scale = TIERS[name].scale
    if name not in remote_targets:
        remote_targets[name] = RemoteTarget(host, name, float(os.environ.get(SCALE_ENV, scale)))
    return remote_targets[name]
