"""`pam-unshare enable/disable/status systemd-user`: the user manager is covered by a unit drop-in
(pam_unshare/usermanager.py), never by a PAM line; on temporary trees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pam_unshare import usermanager


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    path = tmp_path / "systemd" / "system"
    path.mkdir(parents=True)
    return path


def dropin(unit_dir: Path) -> Path:
    return unit_dir / usermanager.DROPIN_DIR / usermanager.DROPIN_NAME


def test_enable_writes_the_dropin_and_no_pam_line(cli_run, pam_dir, unit_dir) -> None:
    before = {p.name: p.read_bytes() for p in pam_dir.iterdir()}
    status, out, err = cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir),
                           "--unit-dir", str(unit_dir))
    assert status == 0, err
    assert dropin(unit_dir).read_text() == usermanager.DROPIN_TEXT
    assert "ProtectProc=invisible" in usermanager.DROPIN_TEXT
    assert oct(dropin(unit_dir).stat().st_mode & 0o777) == "0o644"
    assert {p.name: p.read_bytes() for p in pam_dir.iterdir()} == before
    assert f"enabled systemd-user: {dropin(unit_dir)}" in out
    # Twice: nothing changes.
    status, out, _ = cli_run("enable", "systemd-user", "--unit-dir", str(unit_dir),
                         "--pam-dir", str(pam_dir))
    assert status == 0 and "unchanged" in out


def test_status_lists_the_user_manager_open_with_the_command_that_closes_it(
        cli_run, pam_dir, unit_dir) -> None:
    if not usermanager.unit_exists():
        pytest.fail("this machine has no user@.service: install systemd (bootstrap does)")
    status, out, err = cli_run("status", "--json", "--pam-dir", str(pam_dir), "--unit-dir",
                           str(unit_dir))
    assert status == 0, err
    ways = {u["service"]: u for u in json.loads(out)["uncovered"]}
    assert ways["systemd-user"]["close"] == "pam-unshare enable systemd-user"
    assert ways["login"]["close"] == "pam-unshare enable login"
    text = cli_run("status", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))[1]
    assert "close: pam-unshare enable systemd-user" in text
    cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    ways = {u["service"] for u in json.loads(cli_run(
        "status", "--json", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))[1])[
        "uncovered"]}
    assert "systemd-user" not in ways and "login" in ways


def test_disable_removes_it_and_keeps_other_dropins(cli_run, pam_dir, unit_dir) -> None:
    cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    other = dropin(unit_dir).parent / "admin.conf"
    other.write_text("[Service]\nTasksMax=100\n")
    status, out, err = cli_run("disable", "systemd-user", "--pam-dir", str(pam_dir),
                           "--unit-dir", str(unit_dir))
    assert status == 0, err
    assert not dropin(unit_dir).exists() and other.exists()
    other.unlink()
    cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    cli_run("disable", "systemd-user", "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    assert list(unit_dir.iterdir()) == []


def test_a_symlinked_dropin_directory_is_refused(cli_run, pam_dir, unit_dir, tmp_path) -> None:
    """Attack: the drop-in directory replaced by a symlink to a directory someone else controls
    (root would write where they point)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (unit_dir / usermanager.DROPIN_DIR).symlink_to(elsewhere)
    status, _, err = cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir),
                         "--unit-dir", str(unit_dir))
    assert status != 0 and "Traceback" not in err, err
    assert list(elsewhere.iterdir()) == []


def test_a_dropin_directory_others_can_write_is_refused(cli_run, pam_dir, unit_dir) -> None:
    """Attack: a world-writable user@.service.d lets anyone swap the file for their own unit
    settings (ExecStartPre= as root)."""
    (unit_dir / usermanager.DROPIN_DIR).mkdir(mode=0o777)
    os.chmod(unit_dir / usermanager.DROPIN_DIR, 0o777)
    status, _, err = cli_run("enable", "systemd-user", "--pam-dir", str(pam_dir),
                         "--unit-dir", str(unit_dir))
    assert status == 2, err
    assert "only root can write" in err
    assert not dropin(unit_dir).exists()


def test_enable_su_and_systemd_user_together(cli_run, pam_dir, unit_dir, module_path) -> None:
    status, out, err = cli_run("enable", "su", "systemd-user", "--module", str(module_path),
                           "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    assert status == 0, err
    assert "pam_unshare.so" in (pam_dir / "su").read_text()
    assert dropin(unit_dir).exists()


def test_a_refused_dropin_leaves_the_pam_files_alone(cli_run, pam_dir, unit_dir,
                                                     module_path) -> None:
    """`enable su systemd-user` with an unsafe drop-in directory: refused before su changes
    (all or nothing, as for PAM files)."""
    (unit_dir / usermanager.DROPIN_DIR).mkdir()
    os.chmod(unit_dir / usermanager.DROPIN_DIR, 0o775)
    before = (pam_dir / "su").read_bytes()
    status, _, err = cli_run("enable", "su", "systemd-user", "--module", str(module_path),
                         "--pam-dir", str(pam_dir), "--unit-dir", str(unit_dir))
    assert status == 2, err
    assert (pam_dir / "su").read_bytes() == before


def test_status_reports_an_unreadable_dropin_and_goes_on(cli_run, pam_dir, unit_dir,
                                                         tmp_path) -> None:
    if not usermanager.unit_exists():
        pytest.fail("this machine has no user@.service: install systemd (bootstrap does)")
    (unit_dir / usermanager.DROPIN_DIR).mkdir()
    (unit_dir / usermanager.DROPIN_DIR / usermanager.DROPIN_NAME).symlink_to(tmp_path / "x")
    status, out, err = cli_run("status", "--json", "--pam-dir", str(pam_dir), "--unit-dir",
                           str(unit_dir))
    assert status == 0, err
    ways = {u["service"]: u for u in json.loads(out)["uncovered"]}
    assert "cannot be read" in ways["systemd-user"]["why"]


def test_a_stack_of_systemd_user_that_reaches_the_module_is_refused_and_a_problem(
        cli_run, tmp_path, module_path) -> None:
    """A hand-edited systemd-user stack ending in an include: enabling that include would make
    the module refuse every user manager (PID 1 execs it in the caller). enable refuses it,
    check reports it, status does not count systemd-user as enabled."""
    fixtures = Path(__file__).resolve().parent / "fixtures" / "pam.d"
    etc = tmp_path / "etc" / "pam.d"
    etc.mkdir(parents=True)
    for path in fixtures.iterdir():
        (etc / path.name).write_bytes(path.read_bytes())
    (etc / "systemd-user").write_text("@include common-account\n"
                                      "@include common-session-noninteractive\n")
    before = (etc / "common-session-noninteractive").read_bytes()
    status, _, err = cli_run("enable", "common-session-noninteractive", "--module",
                             str(module_path), "--pam-dir", str(etc))
    assert status == 2, err
    assert "refuses every non-exempt session" in err
    assert (etc / "common-session-noninteractive").read_bytes() == before
    # Put there by hand: check says so and fails.
    (etc / "common-session-noninteractive").write_text(
        before.decode() + f"session required {module_path}\n")
    status, out, err = cli_run("check", "--pam-dir", str(etc))
    assert status == 1 and "systemd-user" in out + err, out + err
    assert "refuses every non-exempt session" in out + err
    facts = json.loads(cli_run("status", "--json", "--pam-dir", str(etc))[1])
    assert "systemd-user" not in {e["service"] for e in facts["enabled"]}
