"""The Vagrant tier (hosts/tiers.py VagrantTier) on bad input: libvirt that cannot start,
vagrant-libvirt missing, a box that is not there, a provisioning failure. Each ends with one
line that says what failed, and leaves no network namespace, libvirt object or process behind.
The suite through Vagrant itself runs in tests/isolation (ssh://pu-vagrant); that the README
shows the commands the tier runs is checked here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require, require_root
from hosts.tiers import (
    VAGRANT_DESTROY,
    VAGRANT_SSH_CONFIG,
    VAGRANT_UP,
    TierError,
    VagrantTier,
)
from hosts.vagrant_box import LibvirtNamespace

ROOT = Path(__file__).resolve().parents[1]
# libvirt's daemons, its dnsmasq and the QEMU of a libvirt domain (-name guest=...).
LIBVIRT_PROCESSES = r"libvirtd|virtlogd|dnsmasq/.*\.conf|-name guest="


def flat(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def test_readme_shows_the_commands_the_tier_runs() -> None:
    readme = flat((ROOT / "README.md").read_text())
    for command in (" ".join(VAGRANT_UP), VAGRANT_SSH_CONFIG, " ".join(VAGRANT_DESTROY),
                    "scripts/vagrant-suite"):
        assert flat(command) in readme, command


def processes() -> set[str]:
    """PID and command line of every libvirt process on the machine."""
    out = subprocess.run(["pgrep", "-a", "-f", LIBVIRT_PROCESSES], capture_output=True,
                         text=True).stdout
    return set(out.splitlines())


def namespaces() -> set[str]:
    return {path.name for path in Path("/run/netns").glob("pu-vagrant-*")}


@pytest.fixture
def tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VagrantTier:
    require_root()
    for tool in ("vagrant", "libvirtd", "virsh", "nc"):
        require(shutil.which(tool) is not None, f"needs {tool} (scripts/bootstrap --test)")
    monkeypatch.delenv("PU_VAGRANT_BOX", raising=False)
    deb = tmp_path / "deb" / "libpam-unshare_0.0_amd64.deb"
    deb.parent.mkdir()
    for package in (deb, deb.with_name("pam-unshare_0.0_amd64.deb")):
        package.write_text("not a Debian package\n")
    return VagrantTier(tmp_path, deb)


def fails_cleanly(tier: VagrantTier, expected: str) -> str:
    """Start TIER, which must fail with one line matching EXPECTED and leave nothing."""
    before = processes(), namespaces()
    with pytest.raises(TierError) as failure:
        tier.start()
    message = str(failure.value)
    print(message)
    assert "\n" not in message, message
    assert re.search(expected, message), message
    assert processes() - before[0] == set()
    assert namespaces() == before[1]
    return message


def test_libvirtd_that_cannot_start(tier: VagrantTier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(LibvirtNamespace, "libvirtd", "/nonexistent/libvirtd")
    fails_cleanly(tier, r"^libvirtd did not start \(rc \d+\): .*/nonexistent/libvirtd")


def test_vagrant_libvirt_missing(tier: VagrantTier, monkeypatch: pytest.MonkeyPatch) -> None:
    # Vagrant without its plugins: as if vagrant-libvirt were not installed.
    monkeypatch.setenv("VAGRANT_NO_PLUGINS", "1")
    fails_cleanly(tier, r"^vagrant up failed \(rc 1\): The provider 'libvirt' could not be found")


def test_box_missing(tier: VagrantTier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PU_VAGRANT_BOX", "pam-unshare-no-such-box")
    tier = VagrantTier(tier.workdir, tier.deb)
    fails_cleanly(tier, r"^PU_VAGRANT_BOX=pam-unshare-no-such-box: no such box")


def test_provisioning_failure(tier: VagrantTier) -> None:
    """Boots the box (about 2 minutes under emulation); the Vagrantfile's provisioner fails on
    a package that is not one, and the tier destroys the box."""
    fails_cleanly(tier, r"^vagrant up failed \(rc 1\): provisioning failed: .*"
                        r"not a Debian format archive")
