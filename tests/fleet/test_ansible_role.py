"""The Ansible role (packaging/ansible) rolled out to three container hosts at once.

The fleet (conftest.py) is three Debian 12 systemd containers without the module, each in its
own network namespace, reached by ansible-playbook on their admin sshd. The tests run in order
and each first puts the fleet in the state it starts from:

- the role enables every host: the PAM lines are there and real su, sudo and ssh logins on each
  host are namespaced;
- a second run changes nothing (changed=0 for every host in the PLAY RECAP);
- --check --diff on a host with other options shows the diff and changes no file;
- pam-auth-update keeps the options the role wrote (another package's postinst, a reinstall);
- pam_unshare_enabled: false gives every host its /etc/pam.d back, byte for byte;
- a host without CAP_SYS_ADMIN fails its self-test, is rolled back to exactly what it was and
  reported failed, while the other two are enabled; also when Ansible connects as an account that
  becomes root through sudo, whose stack the rollback must keep working;
- names with a trailing newline or a leading '-' are refused before anything changes;
- a package directory another user owns is refused (that user swaps the .deb otherwise);
- an upgrade self-tests the new module before installing it, and a failed upgrade goes back to
  the version that was installed;
- a run killed half-way is undone by the on-host timer, which leaves a concurrent apt run's
  new conffile in /etc/pam.d alone; when the timer is gone (a reboot), by the next run before
  it takes its own snapshot;
- the isolation suite runs across the inventory in parallel (testinfra's ansible backend).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from hosts.tiers import ADMIN_PORT, wait_for_port
from pam_unshare_testsupport.debian_package import ROOT

from fleet.conftest import BECOME_VARS, Fleet, PlaybookRun
from pam_unshare import usermanager

SUDO_LINE = "session\trequired\tpam_unshare.so"
COMMON_LINE = "session\trequired\tpam_unshare.so "  # as pam-auth-update writes it
USER = "pu_alice"
EXEMPT_USER = "pu_carol"  # member of pu_exempt
OTHER_OPTIONS = {"pam_unshare_exempt_groups": ["pu_exempt"], "pam_unshare_onerr": "succeed"}
OTHER_OPTIONS_TEXT = "exempt_groups=pu_exempt onerr=succeed"
BROKEN = "pu-fleet-2"
NO_SYS_ADMIN = "/etc/systemd/system/pu-admin-sshd.service.d/no-cap-sys-admin.conf"
CAP_SYS_ADMIN = 21
ISOLATION_TIMEOUT = 900
USER_DROPIN = str(usermanager.dropin_path())


def pam_lines(fleet: Fleet, name: str, service: str) -> List[str]:
    text = fleet.run(name, ["cat", f"/etc/pam.d/{service}"]).stdout
    return [line for line in text.splitlines() if "pam_unshare" in line]


def session_view(fleet: Fleet, name: str, entry: str, user: str = USER) -> Dict[int, str]:
    """{pid: comm} of what a login of USER through ENTRY (su, sudo, ssh) sees on host NAME."""
    probe = "ps -e -o pid=,comm="
    argv = {
        "su": ["su", "-s", "/bin/sh", "-c", probe, user],
        "sudo": ["sudo", "-n", "-u", user, "/bin/sh", "-c", probe],
        # The host's own sshd on port 22 (UsePAM yes), with the key provisioning left for root.
        "ssh": ["ssh", "-i", "/root/.ssh/pu_inner", "-o", "BatchMode=yes", "-o",
                "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                "LogLevel=ERROR", "-p", "22", f"{user}@127.0.0.1", probe],
    }[entry]
    res = fleet.run(name, argv)
    assert res.returncode == 0, f"{entry} on {name}: {res.stderr}"
    view: Dict[int, str] = {}
    for line in res.stdout.splitlines():
        pid, _, comm = line.strip().partition(" ")
        view[int(pid)] = comm.strip()
    return view


def assert_namespaced(fleet: Fleet, name: str, entries: tuple[str, ...] = ("su", "sudo", "ssh")
                      ) -> None:
    for entry in entries:
        view = session_view(fleet, name, entry)
        assert view.get(1) == "pam_unshare", f"{entry} on {name} sees {view}"
        # The host's PID 1 (systemd) and its daemons are not there; under ssh the session's
        # own sshd process (the one that runs the user's command) is.
        assert "systemd" not in view.values() and "systemd-logind" not in view.values(), view
        assert len(view) <= 6, f"{entry} on {name} sees {view}"


def assert_enabled(fleet: Fleet, name: str, options: str = "") -> None:
    assert pam_lines(fleet, name, "common-session") == [COMMON_LINE + options]
    assert pam_lines(fleet, name, "sudo") == [(SUDO_LINE + " " + options).rstrip()]
    assert fleet.run(name, ["dpkg-query", "-W", "libpam-unshare"]).returncode == 0
    assert fleet.run(name, ["pam-unshare", "check"]).returncode == 0


def assert_all_ok(run: PlaybookRun, hosts: List[str]) -> None:
    assert run.returncode == 0, run.tail()
    for name in hosts:
        stats = run.stats(name)
        assert stats["failed"] == 0 and stats["unreachable"] == 0, (name, stats, run.tail())


def enable(fleet: Fleet) -> None:
    """The role with its defaults on every host."""
    assert_all_ok(fleet.playbook(), fleet.names)


def test_role_enables_every_host(fleet: Fleet):
    run = fleet.playbook()
    assert_all_ok(run, fleet.names)
    for name in fleet.names:
        stats = run.stats(name)
        assert stats["changed"] > 0 and stats["rescued"] == 0, (name, stats)
        # The self-tests ran and said why they passed.
        assert "su: PID 1 is pam_unshare" in run.output
        assert_enabled(fleet, name)
        assert_namespaced(fleet, name)
        # The user manager closed by its drop-in (pam-unshare enable systemd-user).
        assert fleet.run(name, ["cat", USER_DROPIN]).stdout == usermanager.DROPIN_TEXT
        # Root stays exempt (module default): the admin's own logins see the whole host.
        assert session_view(fleet, name, "su", "root").get(1) == "systemd"
        # The command line came with the module, and its check ran and is in the recap.
        res = fleet.run(name, ["pam-unshare", "module-path"])
        assert res.stdout == "/usr/lib/x86_64-linux-gnu/security/pam_unshare.so\n", res
        assert re.search(rf'^\s*{name}: {{ *"pam_unshare_check": "ok\b', run.output, re.M), \
            run.tail()
        assert f"pam-unshare check on {name}: " in run.output, run.tail()
        # And verify: every channel closed through every enabled service.
        assert re.search(r'"pam_unshare_verify": "ok: every channel closed"', run.output), \
            run.tail()
        assert f"pam-unshare verify on {name}: every channel closed" in run.output, run.tail()
    # A second run has nothing to do.
    again = fleet.playbook()
    assert_all_ok(again, fleet.names)
    assert {name: again.stats(name)["changed"] for name in fleet.names} == dict.fromkeys(
        fleet.names, 0), again.tail()


def test_check_diff_shows_other_options_and_changes_nothing(fleet: Fleet):
    enable(fleet)
    odd = fleet.names[-1]
    # That host gets other options for real: the role writes them on both lines.
    assert_all_ok(fleet.playbook(extra_vars=OTHER_OPTIONS, limit=odd), [odd])
    assert_enabled(fleet, odd, OTHER_OPTIONS_TEXT)
    assert_namespaced(fleet, odd, ("su",))
    assert session_view(fleet, odd, "su", EXEMPT_USER).get(1) == "systemd"

    before = {name: fleet.digest(name, "/etc/pam.d", "/var/lib/pam") for name in fleet.names}
    run = fleet.playbook("--check", "--diff")
    assert_all_ok(run, fleet.names)
    # The diff of going back to the defaults, on both lines, for that host only.
    assert f"-{COMMON_LINE}{OTHER_OPTIONS_TEXT}\n+{COMMON_LINE}\n" in run.output, run.tail()
    assert f"-{SUDO_LINE} {OTHER_OPTIONS_TEXT}\n+{SUDO_LINE}\n" in run.output, run.tail()
    assert "--- before: /etc/pam.d/common-session" in run.output
    assert run.stats(odd)["changed"] == 2, run.tail()
    for name in fleet.names[:-1]:
        assert run.stats(name)["changed"] == 0, (name, run.tail())
    after = {name: fleet.digest(name, "/etc/pam.d", "/var/lib/pam") for name in fleet.names}
    assert after == before
    assert_enabled(fleet, odd, OTHER_OPTIONS_TEXT)


def test_pam_auth_update_keeps_the_options(fleet: Fleet):
    """What a postinst or an upgrade runs regenerates common-session: the options stay, byte for
    byte, and the role has nothing to do afterwards."""
    odd = fleet.names[-1]
    assert_all_ok(fleet.playbook(extra_vars=OTHER_OPTIONS, limit=odd), [odd])
    before = fleet.digest(odd)
    res = fleet.run(odd, "export DEBIAN_FRONTEND=noninteractive; pam-auth-update --package && "
                         "pam-auth-update --enable pam-unshare && "
                         "dpkg -i /var/cache/pam-unshare/libpam-unshare_*.deb", timeout=120)
    assert res.returncode == 0, res.stderr
    assert fleet.digest(odd) == before
    run = fleet.playbook(extra_vars=OTHER_OPTIONS, limit=odd)
    assert_all_ok(run, [odd])
    assert run.stats(odd)["changed"] == 0, run.tail()


def test_disable_flip_gives_back_pam_d_byte_for_byte(fleet: Fleet):
    enable(fleet)
    run = fleet.playbook("--diff", extra_vars={"pam_unshare_enabled": False})
    assert_all_ok(run, fleet.names)
    for name in fleet.names:
        # The profile, the sudo line, the user manager's drop-in.
        assert run.stats(name)["changed"] == 3, (name, run.tail())
        assert fleet.digest(name) == fleet.pristine[name], name
        assert fleet.run(name, ["test", "-e", USER_DROPIN]).returncode != 0, name
        assert session_view(fleet, name, "su").get(1) == "systemd"
    # Disabled is a state too: nothing left to do.
    again = fleet.playbook(extra_vars={"pam_unshare_enabled": False})
    assert_all_ok(again, fleet.names)
    assert all(again.stats(name)["changed"] == 0 for name in fleet.names), again.tail()
    # Check mode on disabled hosts (the package installed): what enabling would do, nothing done.
    check = fleet.playbook("--check", "--diff")
    assert_all_ok(check, fleet.names)
    assert "would run pam-auth-update --enable pam-unshare" in check.output, check.tail()
    assert f"+{SUDO_LINE}\n" in check.output, check.tail()
    for name in fleet.names:
        assert check.stats(name)["changed"] == 2, (name, check.tail())
        assert fleet.digest(name) == fleet.pristine[name], name


def drop_cap_sys_admin(fleet: Fleet, name: str, drop: bool) -> None:
    """Takes CAP_SYS_ADMIN out of the bounding set of host NAME's admin sshd, or puts it back.

    Every process Ansible starts on that host descends from it, su and sudo included, so the
    module's clone() into new PID and mount namespaces fails with EPERM there: what a host (or a
    container) without CAP_SYS_ADMIN does. Logins through the host's sshd on port 22 keep it."""
    if drop:
        script = (f"mkdir -p {os.path.dirname(NO_SYS_ADMIN)} && printf '[Service]\\n"
                  f"CapabilityBoundingSet=~CAP_SYS_ADMIN\\n' > {NO_SYS_ADMIN}")
    else:
        script = f"rm -f {NO_SYS_ADMIN}"
    res = fleet.run(name, f"{script} && systemctl daemon-reload && "
                          "systemctl restart pu-admin-sshd.service")
    assert res.returncode == 0, res.stderr
    wait_for_port(fleet.tiers[name].address, ADMIN_PORT, timeout=30)
    pid = fleet.run(name, ["systemctl", "show", "-P", "MainPID", "pu-admin-sshd.service"])
    status = fleet.run(name, ["cat", f"/proc/{pid.stdout.strip()}/status"]).stdout
    bounding = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("CapBnd:")), 16)
    assert bool(bounding & (1 << CAP_SYS_ADMIN)) != drop, status


def uninstall(fleet: Fleet, name: str) -> None:
    """Host NAME as before any rollout: no profile, no sudo line, no package."""
    res = fleet.run(name, "export DEBIAN_FRONTEND=noninteractive; "
                          "pam-auth-update --disable pam-unshare; "
                          "sed -i '/pam_unshare/d' /etc/pam.d/sudo; "
                          "dpkg --purge pam-unshare libpam-unshare; "
                          "rm -rf /var/cache/pam-unshare")
    assert res.returncode == 0, res.stderr
    assert fleet.digest(name) == fleet.pristine[name]


def assert_rolled_back(fleet: Fleet, run: PlaybookRun, before: Dict[str, str]) -> None:
    assert run.returncode != 0, run.tail()
    stats = run.stats(BROKEN)
    assert stats["failed"] == 1 and stats["rescued"] == 1, (stats, run.tail())
    assert f"pam_unshare was not enabled on {BROKEN}" in run.output, run.tail()
    assert "Operation not permitted" in run.output, run.tail()
    assert "The host is as it was." in run.output, run.tail()
    assert fleet.digest(BROKEN, "/etc/pam.d", "/var/lib/pam") == before
    assert fleet.digest(BROKEN) == fleet.pristine[BROKEN]
    assert fleet.run(BROKEN, ["dpkg-query", "-W", "libpam-unshare"]).returncode != 0
    assert fleet.run(BROKEN, ["dpkg-query", "-W", "pam-unshare"]).returncode != 0
    assert fleet.run(BROKEN, ["test", "-e", "/var/cache/pam-unshare"]).returncode != 0


def test_broken_host_is_rolled_back_and_the_others_enabled(fleet: Fleet):
    enable(fleet)
    uninstall(fleet, BROKEN)
    drop_cap_sys_admin(fleet, BROKEN, True)
    try:
        before = fleet.digest(BROKEN, "/etc/pam.d", "/var/lib/pam")
        dpkg_log = fleet.run(BROKEN, ["cat", "/var/log/dpkg.log"]).stdout
        # The default: the session through the test's own PAM service, with the module from the
        # extracted package, fails before the package is installed or any stack changes.
        run = fleet.playbook()
        assert_rolled_back(fleet, run, before)
        assert '"Self-test: pam, verdict" failed' in run.output, run.tail()
        assert "dpkg --purge libpam-unshare" not in run.output, run.tail()
        assert fleet.run(BROKEN, ["cat", "/var/log/dpkg.log"]).stdout == dpkg_log
        for name in fleet.names:
            if name != BROKEN:
                assert run.stats(name)["failed"] == 0, (name, run.tail())
                assert_enabled(fleet, name)
                assert_namespaced(fleet, name, ("su",))

        # Without that first test the real su session fails after pam-auth-update enabled the
        # profile and the sudo line went in: all of it is undone. Ansible connects as an account
        # that becomes root through sudo: the PAM files must come back before the package goes,
        # or sudo names a module that is gone and every later step of the rollback fails.
        run = fleet.playbook(extra_vars={"pam_unshare_selftest_before_enable": False,
                                         **BECOME_VARS}, limit=BROKEN)
        assert_rolled_back(fleet, run, before)
        assert '"Self-test: su, verdict" failed' in run.output, run.tail()
        assert "pam-auth-update --disable pam-unshare" in run.output, run.tail()
        assert "dpkg --purge libpam-unshare" in run.output, run.tail()
        # sudo works as it did: the connection's own become, one more time.
        res = fleet.run(BROKEN, ["setpriv", "--reuid=pu_admin", "--regid=pu_admin",
                                 "--init-groups", "sudo", "-n", "true"])
        assert res.returncode == 0, res.stderr
    finally:
        drop_cap_sys_admin(fleet, BROKEN, False)


def test_names_with_a_newline_or_a_leading_dash_are_refused(fleet: Fleet):
    """Python's "$" matches before a final newline: a name "pu_carol\n" passed the check and
    wrote a stray line into common-session. A name that looks like an option reached commands
    as one (id -Gn --help printed its help and passed for an account that exists)."""
    name = fleet.names[0]
    before = fleet.digest(name, "/etc/pam.d", "/var/lib/pam")
    cases = [
        ({"pam_unshare_exempt_users": ["root", "pu_carol\n"]},
         "pam_unshare_exempt_users must be a list of user or group names"),
        ({"pam_unshare_services": ["su", "sudo\n"]},
         "pam_unshare_services must be a list of PAM service names"),
        ({"pam_unshare_selftest_user": "--help"}, "which does not exist on this host"),
    ]
    for extra_vars, message in cases:
        run = fleet.playbook(extra_vars=extra_vars, limit=name)
        assert run.returncode != 0 and message in run.output, (extra_vars, run.tail())
        assert run.stats(name)["changed"] == 0, (extra_vars, run.tail())
        assert fleet.digest(name, "/etc/pam.d", "/var/lib/pam") == before, extra_vars


def derived_deb(deb: Path, out: Path, suffix: str, *, module: bytes | None = None,
                postinst: str | None = None) -> Path:
    """DEB again with version VERSION+SUFFIX: optionally another module file, or a line put in
    front of its postinst's code."""
    tree = out / f"tree-{suffix}"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    version = next(line.split(": ", 1)[1] for line in control.read_text().splitlines()
                   if line.startswith("Version: "))
    control.write_text(control.read_text().replace(f"Version: {version}\n",
                                                   f"Version: {version}+{suffix}\n"))
    if module is not None:
        (so,) = tree.glob("usr/lib/*/security/pam_unshare.so")
        so.write_bytes(module)
    if postinst is not None:
        script = tree / "DEBIAN" / "postinst"
        text = script.read_text()
        script.write_text(text.replace("set -e\n", f"set -e\n{postinst}\n", 1))
    path = out / f"libpam-unshare_{version}+{suffix}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(path)], check=True,
                   capture_output=True)
    # Its command line's package, of the same version, next to it (where the role looks).
    cli_tree = out / f"cli-tree-{suffix}"
    cli = deb.parent / deb.name.replace("libpam-unshare_", "pam-unshare_", 1)
    subprocess.run(["dpkg-deb", "-R", str(cli), str(cli_tree)], check=True)
    control = cli_tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"{version}", f"{version}+{suffix}"))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(cli_tree),
                    str(out / f"pam-unshare_{version}+{suffix}_amd64.deb")], check=True,
                   capture_output=True)
    return path


def installed(fleet: Fleet, name: str) -> str:
    return fleet.run(name, ["dpkg-query", "--show", "--showformat=${db:Status-Abbrev}${Version}",
                            "libpam-unshare"]).stdout


def test_package_directory_of_another_user_is_refused(fleet: Fleet, tmp_path: Path):
    """pu_alice owns the directory root installs the package from: she replaces the .deb root
    just copied there with her own, whose postinst root runs."""
    name = fleet.names[0]
    assert_all_ok(fleet.playbook(limit=name), [name])
    version = installed(fleet, name)
    evil = derived_deb(fleet.deb, tmp_path, "evil", postinst="touch /pu-evil-ran")
    container = fleet.tiers[name].container
    assert container is not None
    container.write_file("/home/pu_alice/evil.deb", evil.read_bytes())
    target = f"/var/cache/pam-unshare/{fleet.deb.name}"
    swap = (f"while :; do cmp -s /home/pu_alice/evil.deb {target} || "
            f"{{ cp /home/pu_alice/evil.deb /var/cache/pam-unshare/.x && "
            f"mv -f /var/cache/pam-unshare/.x {target}; }}; sleep 0.05; done")
    res = fleet.run(name, "chown -R pu_alice: /var/cache/pam-unshare /home/pu_alice/evil.deb && "
                          "setsid timeout 300 setpriv --reuid=pu_alice --regid=pu_alice "
                          f"--init-groups sh -c '{swap}' >/dev/null 2>&1 < /dev/null & "
                          "echo $!")
    assert res.returncode == 0, res.stderr
    swapper = res.stdout.strip()
    try:
        run = fleet.playbook(limit=name)
        assert fleet.run(name, ["test", "-e", "/pu-evil-ran"]).returncode != 0, \
            "root ran the postinst of pu_alice's package"
        assert installed(fleet, name) == version
        assert run.returncode != 0, run.tail()
        assert "Refusing to install from pam_unshare_deb_dir /var/cache/pam-unshare" in \
            run.output and "owner pu_alice" in run.output, run.tail()
        assert run.stats(name)["changed"] == 0, run.tail()
    finally:
        fleet.run(name, f"kill {swapper}; rm -f /pu-evil-ran /home/pu_alice/evil.deb; "
                        "chown -R root:root /var/cache/pam-unshare")
        container.write_file(target, fleet.deb.read_bytes())
        if installed(fleet, name) != version:
            fleet.run(name, ["dpkg", "-i", target], timeout=120)
    assert installed(fleet, name) == version


def test_upgrade_tests_the_new_module_first_and_goes_back_on_failure(fleet: Fleet,
                                                                      tmp_path: Path):
    name = fleet.names[0]
    assert_all_ok(fleet.playbook(limit=name), [name])
    version = installed(fleet, name)
    assert version.startswith("ii "), version
    before = fleet.digest(name, "/etc/pam.d", "/var/lib/pam")
    log_before = len(fleet.run(name, ["cat", "/var/log/dpkg.log"]).stdout.splitlines())
    # A module that does not load: installed, it would fail every stack that names it at once.
    broken = derived_deb(fleet.deb, tmp_path, "broken", module=b"not an ELF file\n")
    # A working module whose postinst fails: dpkg has unpacked it (the new module is live) and
    # left the package half-configured.
    failing = derived_deb(fleet.deb, tmp_path, "failing", postinst="exit 1")
    try:
        run = fleet.playbook(extra_vars={"pam_unshare_deb": str(broken)}, limit=name)
        assert run.returncode != 0 and run.stats(name)["rescued"] == 1, run.tail()
        assert '"Self-test: load, verdict" failed' in run.output, run.tail()
        assert "The host is as it was." in run.output, run.tail()
        assert installed(fleet, name) == version
        log = fleet.run(name, ["cat", "/var/log/dpkg.log"]).stdout.splitlines()[log_before:]
        assert not [line for line in log if "+broken" in line], log
        assert fleet.digest(name, "/etc/pam.d", "/var/lib/pam") == before
        assert_namespaced(fleet, name)

        run = fleet.playbook(extra_vars={"pam_unshare_deb": str(failing)}, limit=name)
        assert run.returncode != 0 and run.stats(name)["rescued"] == 1, run.tail()
        assert "Install the package" in run.output, run.tail()
        assert f"libpam-unshare {version[3:]} reinstalled" in run.output, run.tail()
        assert "The host is as it was." in run.output, run.tail()
        assert installed(fleet, name) == version
        assert fleet.digest(name, "/etc/pam.d", "/var/lib/pam") == before
        assert_namespaced(fleet, name)
    finally:
        fleet.run(name, "rm -f /var/cache/pam-unshare/*+broken_* "
                        "/var/cache/pam-unshare/*+failing_*")
        if installed(fleet, name) != version:
            fleet.run(name, f"dpkg -i /var/cache/pam-unshare/{fleet.deb.name} "
                            f"/var/cache/pam-unshare/{fleet.cli_deb.name}", timeout=120)


GUARD_SECONDS = 45
GUARD_UNIT = "pam-unshare-rollback-guard"


def concurrent_deb(out: Path) -> Path:
    """A package with a conffile in /etc/pam.d, for an apt run next to the role's."""
    tree = out / "pu-concurrent"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "etc" / "pam.d").mkdir(parents=True)
    (tree / "etc" / "pam.d" / "pu-concurrent").write_text("@include common-auth\n")
    (tree / "DEBIAN" / "conffiles").write_text("/etc/pam.d/pu-concurrent\n")
    (tree / "DEBIAN" / "control").write_text(
        "Package: pu-concurrent\nVersion: 1\nArchitecture: all\n"
        "Maintainer: pam-unshare tests <root@localhost>\n"
        "Description: a PAM service file installed while the role runs\n")
    path = out / "pu-concurrent_1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(path)], check=True,
                   capture_output=True)
    return path


def test_interrupted_run_is_undone_by_the_on_host_timer(fleet: Fleet, tmp_path: Path):
    """The controller dies after the profile went in: the host is half-applied, and the next run
    would take that as the state to roll back to. The timer the run armed puts it back; a
    package apt installed in the meantime keeps its new file in /etc/pam.d."""
    name = fleet.names[-1]
    uninstall(fleet, name)
    run = fleet.playbook_killed_at(
        "The module's options on its line in common-session",
        extra_vars={"pam_unshare_guard_seconds": GUARD_SECONDS}, limit=name)
    killed = time.monotonic()
    assert pam_lines(fleet, name, "common-session") == [COMMON_LINE], run.tail()
    container = fleet.tiers[name].container
    assert container is not None
    container.write_file("/root/pu-concurrent.deb", concurrent_deb(tmp_path).read_bytes())
    try:
        res = fleet.run(name, "DEBIAN_FRONTEND=noninteractive dpkg -i /root/pu-concurrent.deb",
                        timeout=120)
        assert res.returncode == 0, res.stderr
        conffile = "/etc/pam.d/pu-concurrent"
        added = {conffile: fleet.digest(name)[conffile]}
        deadline = killed + GUARD_SECONDS + 60
        while fleet.run(name, ["systemctl", "--quiet", "is-active",
                               f"{GUARD_UNIT}.timer"]).returncode == 0:
            assert time.monotonic() < deadline, "the safety net timer never fired"
            time.sleep(2)
        while fleet.run(name, ["systemctl", "--quiet", "is-active",
                               f"{GUARD_UNIT}.service"]).returncode == 0:
            assert time.monotonic() < deadline, "the safety net is still running"
            time.sleep(1)
        print(f"\nsafety net done {time.monotonic() - killed:.1f} s after the kill",
              file=sys.stderr)
        assert pam_lines(fleet, name, "common-session") == [], \
            fleet.run(name, ["journalctl", "-q", "-u", f"{GUARD_UNIT}.service"]).stdout
        assert fleet.digest(name) == {**fleet.pristine[name], **added}
        assert fleet.run(name, ["dpkg-query", "-W", "libpam-unshare"]).returncode != 0
        assert fleet.run(name, ["dpkg", "--verify", "pu-concurrent"]).returncode == 0
        assert session_view(fleet, name, "su").get(1) == "systemd"
    finally:
        fleet.run(name, "dpkg --purge pu-concurrent; rm -f /root/pu-concurrent.deb", timeout=120)


def test_next_run_undoes_an_interrupted_run_before_its_own_snapshot(fleet: Fleet):
    """A reboot drops the transient timer before it fired: the next run finds the rollback that
    never ran and runs it before it takes the host as its baseline."""
    name = fleet.names[-1]
    uninstall(fleet, name)
    fleet.playbook_killed_at("The module's options on its line in common-session",
                             extra_vars={}, limit=name)
    assert pam_lines(fleet, name, "common-session") == [COMMON_LINE]
    # What a reboot does to a transient timer.
    res = fleet.run(name, ["systemctl", "stop", f"{GUARD_UNIT}.timer"])
    assert res.returncode == 0, res.stderr
    run = fleet.playbook(extra_vars={"pam_unshare_enabled": False}, limit=name)
    assert_all_ok(run, [name])
    assert "restored from the snapshot of an interrupted run" in run.output, run.tail()
    assert "dpkg --purge libpam-unshare" in run.output, run.tail()
    assert fleet.digest(name) == fleet.pristine[name]
    assert fleet.run(name, ["dpkg-query", "-W", "libpam-unshare"]).returncode != 0
    leftovers = fleet.run(name, "ls /var/lib/pam-unshare-role").stdout.split()
    assert leftovers == [], leftovers


def test_isolation_suite_across_the_fleet(fleet: Fleet):
    enable(fleet)
    argv = [sys.executable, "-P", "-m", "pytest", "tests/isolation", "--hosts=ansible://all",
            f"--ansible-inventory={fleet.inventory}", "-n", str(len(fleet.names)),
            # One worker per host: a test changes its host's module options for a block.
            "--dist=loadgroup",
            "-p", "no:cacheprovider", "-v"]
    started = time.monotonic()
    res = subprocess.run(argv, cwd=ROOT, env=fleet.env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=ISOLATION_TIMEOUT)
    (fleet.workdir / "isolation-suite.log").write_text(res.stdout)
    print(f"\nisolation suite across {fleet.names}: rc {res.returncode}, "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    tail = "\n".join(res.stdout.splitlines()[-60:])
    assert res.returncode == 0, tail
    for name in fleet.names:
        passed = [line for line in res.stdout.splitlines() if "PASSED" in line and name in line]
        assert passed, f"no test passed on {name}:\n{tail}"
        # loadgroup marks each test id with its group: one worker per host, as it must be.
        ungrouped = [line for line in passed if f"@ansible://{name}" not in line]
        assert not ungrouped, f"tests of {name} ran outside its xdist group: {ungrouped[:3]}"
