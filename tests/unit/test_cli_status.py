"""`pam-unshare status`, `check`, `install` and `uninstall` on temporary trees."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from conftest import require_root

from pam_unshare import pamd, system

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pam.d"


def add_line(path: Path, line: str, before_text: str | None = None) -> None:
    """Writes a line by hand, as an administrator might have (possibly in the wrong place)."""
    text = path.read_text()
    if before_text is None:
        text += line + "\n"
    else:
        text = text.replace(before_text, line + "\n" + before_text, 1)
    path.write_text(text)


def test_status_json_reports_services_options_kernel_and_coverage(cli_run, pam_dir, module_path):
    assert cli_run("enable", "su", "sshd", "-o", "onerr=succeed", "-o", "scope=user",
                   "--module", str(module_path), "--pam-dir", str(pam_dir))[0] == 0
    status, out, err = cli_run("status", "--json", "--pam-dir", str(pam_dir))
    assert status == 0, err
    facts = json.loads(out)
    enabled = {entry["service"]: entry for entry in facts["enabled"]}
    assert set(enabled) == {"su", "su-l", "sshd"}
    assert enabled["su"]["options"] == ["onerr=succeed", "scope=user"]
    assert enabled["su"]["via"] is None
    # Every option the module runs with, scope included (a hand-written copy once lost it).
    assert enabled["su"]["effective"] == {
        "onerr": "succeed", "propagation": "slave", "on_logout": "linger", "scope": "user",
        "max_sessions": 256, "debug": False, "exempt_users": ["root"], "exempt_groups": None,
        "only_groups": None}
    assert enabled["su"]["line"] == 60
    assert enabled["su-l"]["via"] == "su"
    uncovered = {entry["service"] for entry in facts["uncovered"]}
    assert {"login", "sudo", "sudo-i", "runuser", "runuser-l"} <= uncovered
    assert not uncovered & {"su", "su-l", "sshd"}
    assert "chfn" not in uncovered  # opens no user session
    kernel = facts["kernel"]
    assert kernel["max_pid_namespaces"] == int(
        Path("/proc/sys/user/max_pid_namespaces").read_text())
    assert kernel["root_propagation"] in ("shared", "slave", "private", "unbindable")
    if os.geteuid() == 0:
        assert kernel["unshare"] == "works"
    else:
        assert kernel["unshare"] == "not tried: needs root"
    built = facts["module"]["built"]
    assert built["path"] == str(module_path)
    assert built["sha256"] == hashlib.sha256(module_path.read_bytes()).hexdigest()
    assert facts["problems"] == []


def test_status_text(cli_run, pam_dir):
    status, out, err = cli_run("status", "--pam-dir", str(pam_dir))
    assert status == 0, err
    assert "enabled in" in out and "(no service)" in out
    assert "not covered" in out and "sshd" in out
    assert out.startswith("module:    pam-unshare ")


def test_check_passes_on_a_tree_enable_wrote(cli_run, pam_dir, module_path):
    assert cli_run("enable", "su", "sudo", "sudo-i", "sshd", "login", "--module", str(module_path),
               "--pam-dir", str(pam_dir))[0] == 0
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert status == 0
    assert out == "ok: pam_unshare.so is enabled for login, sshd, su, su-l, sudo, sudo-i\n"


def test_check_without_any_line(cli_run, pam_dir):
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert (status, out) == (0, f"ok: no file in {pam_dir} uses pam_unshare.so\n")


def test_check_reports_a_group_that_does_not_exist(cli_run, pam_dir, module_path):
    add_line(pam_dir / "sudo", f"session required {module_path} only_groups=pu_no_such_group")
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert status == 1
    assert f"{pam_dir / 'sudo'}:9: group \"pu_no_such_group\" does not exist" in out, out


def test_check_reports_one_line_per_problem(cli_run, pam_dir, module_path, tmp_path):
    # A typo in an option, on a line of its own.
    add_line(pam_dir / "sudo", f"session required {module_path} onerr=sometimes")
    # A line before pam_loginuid and common-session.
    add_line(pam_dir / "sshd", f"session required {module_path}", "session    required     "
             "pam_loginuid.so")
    # A module that is not there.
    add_line(pam_dir / "login", f"session required {tmp_path}/gone/pam_unshare.so")
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert status == 1
    problems = [line for line in out.splitlines() if not line.startswith("warning:")]
    assert len(problems) == 3, out
    sudo, sshd_order, login = sorted(problems, key=lambda p: ("sudo" not in p,
                                                               "sshd" not in p))
    assert f"{pam_dir / 'sudo'}:9: option \"onerr=sometimes\": onerr must be fail or succeed" \
        in sudo
    assert sshd_order.startswith(f"{pam_dir / 'sshd'}: pam_loginuid.so (sshd:")
    # pam_selinux needs /proc/self only where SELinux is on.
    needy = ("pam_loginuid.so, pam_selinux.so, pam_systemd.so" if system.selinux_enabled()
             else "pam_loginuid.so, pam_systemd.so")
    assert f"({needy} need /proc/self" in sshd_order
    assert "it must be the last session module" in sshd_order
    assert login.startswith(f"{pam_dir / 'login'}:") and "does not exist" in login


def test_check_on_the_packaged_profiles_placement(cli_run, pam_dir, module_path):
    """The Debian profile's line, last of common-session: sshd runs pam_motd, pam_mail,
    pam_limits, pam_env and pam_selinux after it. Without SELinux none of them needs /proc/self
    (pam_selinux does nothing): a warning. With SELinux, pam_selinux breaks: a problem."""
    add_line(pam_dir / "common-session", f"session required {module_path}")
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    sshd = [line for line in out.splitlines() if f"{pam_dir / 'sshd'}:" in line]
    assert len(sshd) == 1, out
    assert "pam_motd.so (sshd:" in sshd[0] and "run after pam_unshare.so (common-session:" \
        in sshd[0]
    if system.selinux_enabled():
        assert status == 1 and not sshd[0].startswith("warning:"), out
        assert "(pam_selinux.so needs /proc/self" in sshd[0]
    else:
        assert status == 0 and sshd[0].startswith("warning:"), out
        assert "none of them needs /proc/self here" in sshd[0]


def test_check_warns_about_a_stack_that_reaches_the_module_twice(cli_run, pam_dir, module_path):
    add_line(pam_dir / "su", f"session required {module_path}")
    add_line(pam_dir / "su-l", f"session required {module_path}")
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert status == 0
    assert out.startswith(f"warning: {pam_dir / 'su-l'}: reaches pam_unshare.so 2 times")


def test_check_warns_about_controls_that_skip_the_module(cli_run, pam_dir, module_path):
    add_line(pam_dir / "sudo", "session sufficient pam_permit.so", "@include common-auth")
    add_line(pam_dir / "sudo", f"session optional {module_path}")
    status, out, _ = cli_run("check", "--pam-dir", str(pam_dir))
    assert status == 0
    assert "pam_permit.so (sudo:6) can end the session stack" in out
    assert 'control "optional"' in out


def test_check_of_a_missing_directory(cli_run, tmp_path):
    status, _, err = cli_run("check", "--pam-dir", str(tmp_path / "none"))
    assert status == 2 and "no such directory" in err


def test_install_into_a_directory(cli_run, tmp_path, module_path):
    dest = tmp_path / "security"
    dest.mkdir()
    status, out, err = cli_run("install", "--dest", str(dest))
    assert status == 0, err
    installed = dest / "pam_unshare.so"
    assert installed.read_bytes() == module_path.read_bytes()
    assert os.stat(installed).st_mode & 0o7777 == 0o644
    assert out.startswith(f"installed: {installed} (pam-unshare ")
    assert [p.name for p in dest.iterdir()] == ["pam_unshare.so"]  # no temporary file left
    inode = os.stat(installed).st_ino
    status, out, _ = cli_run("install", "--dest", str(dest))
    assert status == 0 and out.startswith("already installed (identical copy)")
    assert os.stat(installed).st_ino == inode


def test_install_as_root_makes_the_copy_root_owned(cli_run, tmp_path):
    require_root()
    dest = tmp_path / "security"
    dest.mkdir()
    (dest / "pam_unshare.so").write_bytes(b"an old, different build")
    os.chown(dest / "pam_unshare.so", 1234, 1234)
    assert cli_run("install", "--dest", str(dest))[0] == 0
    info = os.stat(dest / "pam_unshare.so")
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, 0, 0o644)


def test_install_into_a_missing_directory_is_refused(cli_run, tmp_path):
    status, _, err = cli_run("install", "--dest", str(tmp_path / "none"))
    assert status == 2 and "no such directory" in err


def test_uninstall_refuses_while_a_pam_file_uses_the_module(cli_run, tmp_path, pam_dir):
    dest = tmp_path / "security"
    dest.mkdir()
    assert cli_run("install", "--dest", str(dest))[0] == 0
    installed = dest / "pam_unshare.so"
    assert cli_run("enable", "su", "sshd", "--module", str(installed), "--pam-dir",
               str(pam_dir))[0] == 0
    status, _, err = cli_run("uninstall", "--dest", str(dest), "--pam-dir", str(pam_dir))
    assert status == 2
    assert "still used by sshd:" in err and "su:60" in err
    assert "pam-unshare disable sshd su" in err
    assert installed.exists()
    assert cli_run("disable", "su", "sshd", "--pam-dir", str(pam_dir))[0] == 0
    status, out, _ = cli_run("uninstall", "--dest", str(dest), "--pam-dir", str(pam_dir))
    assert (status, out) == (0, f"removed {installed}\n")
    assert not installed.exists()


def test_enable_accepts_the_installed_copy(cli_run, tmp_path, pam_dir):
    dest = tmp_path / "security"
    dest.mkdir()
    assert cli_run("install", "--dest", str(dest))[0] == 0
    status, _, err = cli_run("enable", "su", "--module", str(dest / "pam_unshare.so"),
                         "--pam-dir", str(pam_dir))
    assert status == 0, err
    line = pamd.session_line(str(dest / "pam_unshare.so"))
    assert line in (pam_dir / "su").read_text().splitlines()
