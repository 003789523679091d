"""`pam-unshare install/uninstall/status` and the D-Bus policy (pam_unshare/dbuspolicy.py), on
temporary trees. That the bus honours the file is proven on the systemd container
(tests/test_systemd_host.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pam_unshare import dbuspolicy

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "debian" / "dbus" / "pam-unshare.conf"


@pytest.fixture
def dbus_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dbus-1" / "system.d"
    path.parent.mkdir()
    return path


def test_the_installed_package_carries_the_debian_packages_policy() -> None:
    """Written once: the CLI ships the very bytes the Debian package does."""
    assert dbuspolicy.source().read_bytes() == SHIPPED.read_bytes()
    text = SHIPPED.read_text()
    assert 'send_member="GetUnitProcesses"' in text and 'send_member="GetProcesses"' in text


def test_install_writes_the_policy_and_uninstall_removes_it(cli_run, tmp_path, dbus_dir) -> None:
    modules = tmp_path / "security"
    modules.mkdir()
    status, out, err = cli_run("install", "--dest", str(modules), "--dbus-dir", str(dbus_dir))
    assert status == 0, err
    policy = dbus_dir / dbuspolicy.NAME
    assert policy.read_bytes() == SHIPPED.read_bytes()
    assert oct(policy.stat().st_mode & 0o777) == "0o644"
    assert f"installed: {policy}" in out
    status, out, err = cli_run("uninstall", "--dest", str(modules), "--dbus-dir", str(dbus_dir),
                           "--pam-dir", str(tmp_path))
    assert status == 0, err
    assert not policy.exists() and f"removed {policy}" in out


def test_a_policy_directory_others_can_write_is_refused(cli_run, tmp_path, dbus_dir) -> None:
    """Attack: a world-writable system.d would let anyone swap in a policy of their own."""
    dbus_dir.mkdir()
    os.chmod(dbus_dir, 0o777)
    modules = tmp_path / "security"
    modules.mkdir()
    status, _, err = cli_run("install", "--dest", str(modules), "--dbus-dir", str(dbus_dir))
    assert status == 2, err
    assert "only root can write" in err
    assert not (dbus_dir / dbuspolicy.NAME).exists()


@pytest.mark.parametrize(("text", "expected"), [
    (None, "missing"),
    (b"<busconfig><policy context=", "broken"),
    (b"<busconfig/>", "modified"),
])
def test_state_tells_a_policy_the_bus_skips(dbus_dir, text, expected) -> None:
    dbus_dir.mkdir()
    if text is not None:
        (dbus_dir / dbuspolicy.NAME).write_bytes(text)
    other = dbus_dir.parent / "share"  # an empty package directory
    state = dbuspolicy.state((dbus_dir, other))
    assert state.state == expected
    # An edited copy may enforce nothing (a bus skips what it cannot read): never "closed".
    assert not state.closed


def test_status_lists_the_bus_as_a_way_around_while_the_policy_is_missing(cli_run, pam_dir) -> None:
    facts = json.loads(cli_run("status", "--json", "--pam-dir", str(pam_dir))[1])
    state = dbuspolicy.state()
    assert facts["dbus_policy"]["state"] == state.state
    listed = "system bus" in {u["service"] for u in facts["uncovered"]}
    assert listed == (not state.closed)


def test_install_creates_the_admin_directory_where_only_the_package_one_exists(
        cli_run, tmp_path) -> None:
    """Hosts with /usr/share/dbus-1 but no /etc/dbus-1 (Arch-like): status would ask for
    install forever if install did nothing there."""
    dbus_dir = tmp_path / "etc" / "dbus-1" / "system.d"
    (tmp_path / "etc").mkdir()
    modules = tmp_path / "security"
    modules.mkdir()
    dbuspolicy_package = dbuspolicy.PACKAGE_DIR
    try:
        dbuspolicy.PACKAGE_DIR = tmp_path / "share" / "dbus-1" / "system.d"
        dbuspolicy.PACKAGE_DIR.mkdir(parents=True)
        status, out, err = cli_run("install", "--dest", str(modules), "--dbus-dir", str(dbus_dir))
    finally:
        dbuspolicy.PACKAGE_DIR = dbuspolicy_package
    assert status == 0, err
    assert (dbus_dir / dbuspolicy.NAME).read_bytes() == SHIPPED.read_bytes()


def test_a_symlinked_policy_directory_is_refused(cli_run, tmp_path, dbus_dir) -> None:
    """Attack: system.d replaced by a symlink to a directory someone else controls."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dbus_dir.symlink_to(elsewhere)
    modules = tmp_path / "security"
    modules.mkdir()
    status, _, err = cli_run("install", "--dest", str(modules), "--dbus-dir", str(dbus_dir))
    assert status == 2, err
    assert list(elsewhere.iterdir()) == []
