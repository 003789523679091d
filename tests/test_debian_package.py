"""The Debian package libpam-unshare (packaging/).

packaging/build-deb builds the .deb into a temporary directory; lintian must print no error and no
warning; its contents are checked; then it is installed, the way an administrator would, into a
booted Debian 12 systemd container of its own (tests/hosts): ``dpkg -i``, ``pam-auth-update
--enable pam-unshare``, real logins, ``--disable``, remove and purge, after which /etc/pam.d must be
byte-identical to what it was before the install. The removal paths (issue 20) each get a fresh
container: lines pam-auth-update does not manage, a locally modified common-session, upgrade and
reinstall, a removal refused; after each, su, sudo and ssh work for root and a user and no PAM
file names a missing module. Nothing here touches this machine's PAM configuration or package
database.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import require_tools
from hosts.fixtures import CACHE_ENV, systemd_container_missing, unavailable
from hosts.systemd_container import DEFAULT_CACHE_DIR, SUITE, SystemdContainer, build_rootfs
from pam_unshare_testsupport.debian_package import (
    DEBIAN_DIR,
    PACKAGE,
    ROOT,
    debian_version,
    project_version,
    seed_apt,
)

from pam_unshare import pamd

PROFILE_NAME = "pam-unshare"
MODULE = "usr/lib/x86_64-linux-gnu/security/pam_unshare.so"
PROFILE = f"usr/share/pam-configs/{PROFILE_NAME}"
MANPAGE = "usr/share/man/man8/pam_unshare.8.gz"
DBUS_POLICY = "usr/share/dbus-1/system.d/pam-unshare.conf"
# Everything the man page must cover (the list).
MAN_SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "MODULE TYPES PROVIDED",
                "RETURN VALUES", "EXAMPLES", "ORDERING", "SECURITY NOTES", "FILES", "SEE ALSO")
# The options of the issue; the man page must also document any other csrc/options.c accepts.
MAN_OPTIONS = ("debug", "onerr=", "propagation=", "on_logout=", "exempt_users=",
               "exempt_groups=", "only_groups=")
OPTIONS_C = ROOT / "csrc" / "options.c"
MAN_TERMS = ("PAM_SUCCESS", "PAM_SYSTEM_ERR", "PAM_SESSION_ERR", "pam_loginuid", "pam_systemd",
             "pam_selinux", "GetUnitProcesses", "systemd --user", "cron", "/proc/self",
             "CLONE_THREAD", "common-session-noninteractive")

DEB_IN_CONTAINER = "/root/libpam-unshare.deb"
ALICE = "pu_alice"
BOB = "pu_bob"
SSH_KEY = "/root/pu-ssh-key"
# Commands inside the container: no debconf prompts, no frontend warnings.
NONINTERACTIVE = "export DEBIAN_FRONTEND=noninteractive; "
# A file tree as {relative path: "file <mode> <sha256>" | "link <target>" | "dir <mode>"}.
SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, stat, sys
tree = {}
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                tree[path] = "link " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                tree[path] = "dir %o" % stat.S_IMODE(st.st_mode)
            else:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                tree[path] = "file %o %d:%d %s" % (stat.S_IMODE(st.st_mode), st.st_uid,
                                                   st.st_gid, digest)
json.dump(tree, sys.stdout, sort_keys=True)
"""


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="session")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb's files (dpkg-deb -x) with its control files in DEBIAN/ (dpkg-deb -e)."""
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(root / "DEBIAN")], check=True)
    return root


def test_version_from_pyproject(deb: Path):
    assert deb_field(deb, "Package") == PACKAGE
    assert deb_field(deb, "Version") == debian_version(project_version())
    assert deb_field(deb, "Architecture") == "amd64"
    # No version written down anywhere else in packaging/.
    for path in DEBIAN_DIR.rglob("*"):
        if path.is_file():
            assert project_version() not in path.read_text(errors="replace"), path


def assert_lintian_clean(package: Path) -> None:
    """No error and no warning from this release's lintian."""
    require_tools("lintian")
    res = subprocess.run(["lintian", "--fail-on", "error,warning", str(package)],
                         capture_output=True, text=True, timeout=300)
    report = res.stdout + res.stderr
    assert [ln for ln in report.splitlines() if ln.startswith(("E:", "W:"))] == [], report
    assert res.returncode == 0, report


def test_lintian_clean(deb: Path):
    """No error and no warning; the overrides (informational tags only) carry their reasons."""
    assert_lintian_clean(deb)
    overrides = (DEBIAN_DIR / f"{PACKAGE}.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(overrides):
        if line and not line.startswith("#"):
            assert i > 0 and overrides[i - 1].startswith("#"), f"override without a reason: {line}"


def test_deb_contents(deb: Path, unpacked: Path):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        entries[name.removeprefix("./")] = (mode, owner)
    assert entries[MODULE] == ("-rw-r--r--", "root/root"), listing
    assert entries[MANPAGE] == ("-rw-r--r--", "root/root"), listing
    assert entries[PROFILE] == ("-rw-r--r--", "root/root"), listing
    # Under /usr/share, not /etc: a package's D-Bus policy, gone with the package on remove.
    assert entries[DBUS_POLICY] == ("-rw-r--r--", "root/root"), listing
    # The module is the only binary: the init is embedded, the CLI is not in this package.
    files = [name for name, (mode, _) in entries.items() if mode.startswith("-")]
    assert [f for f in files if "/bin/" in f or f.endswith(".so")] == [MODULE], listing
    assert not [f for f in files if "/man1/" in f], listing

    module = unpacked / MODULE
    dynamic = subprocess.run(["readelf", "-d", "-W", str(module)], capture_output=True,
                             text=True, check=True).stdout
    needed = set(re.findall(r"\(NEEDED\).*\[(.+)\]", dynamic))
    assert needed == {"libc.so.6", "libpam.so.0"}, dynamic
    assert "BIND_NOW" in dynamic, dynamic
    exported = subprocess.run(["nm", "-D", "--defined-only", str(module)], capture_output=True,
                              text=True, check=True).stdout.split()[2::3]
    assert sorted(exported) == ["pam_sm_close_session", "pam_sm_open_session"]
    headers = subprocess.run(["readelf", "-l", "-W", str(module)], capture_output=True,
                             text=True, check=True).stdout
    stack = [ln for ln in headers.splitlines() if "GNU_STACK" in ln]
    assert stack and "RWE" not in stack[0], headers
    assert "GNU_RELRO" in headers, headers

    depends = deb_field(deb, "Depends")
    assert "libpam-runtime" in depends and "libpam0g" in depends, depends


def parse_profile(text: str) -> Dict[str, str]:
    """A pam-auth-update profile: "Field: value" lines, indented continuation lines."""
    fields: Dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if match := re.match(r"^(\S+):\s*(.*)$", line):
            key = match[1]
            fields[key] = match[2].strip()
        elif line.strip():
            fields[key] = (fields[key] + "\n" + line.strip()).strip()
    return fields


def test_profile(unpacked: Path):
    profile = parse_profile((unpacked / PROFILE).read_text())
    assert profile["Default"] == "no"
    assert profile["Session-Type"] == "Additional"
    assert profile["Session-Interactive-Only"] == "yes"
    assert profile["Session"].split() == ["required", "pam_unshare.so"]
    # pam-auth-update orders by Priority (higher first), then by name: below libpam-systemd's
    # profile (Priority 0) and every other one that ships with priority 0.
    assert int(profile["Priority"]) < 0
    assert set(profile) == {"Name", "Default", "Priority", "Session-Type",
                            "Session-Interactive-Only", "Session"}


def test_maintainer_scripts(unpacked: Path):
    postinst = (unpacked / "DEBIAN" / "postinst").read_text()
    prerm = (unpacked / "DEBIAN" / "prerm").read_text()
    assert re.search(r"^\s*pam-auth-update --package$", postinst, re.M), postinst
    assert re.search(r"^\s*pam-auth-update --package --remove pam-unshare$", prerm, re.M), prerm
    assert '"$1" = remove' in prerm, prerm
    postrm = (unpacked / "DEBIAN" / "postrm").read_text()
    assert "ReloadConfig" in postrm and "ReloadConfig" in postinst
    assert not (unpacked / "DEBIAN" / "conffiles").exists()


def source_options() -> List[str]:
    """Every option csrc/options.c accepts: "word" flags and "key=" options."""
    text = OPTIONS_C.read_text()
    flags = re.findall(r'strcmp\(arg, "(\w+)"\) == 0', text)
    keys = [f"{key}=" for key in re.findall(r'value_of\(arg, "(\w+)"\)', text)]
    return flags + keys


def test_man_page(unpacked: Path):
    require_tools("man")
    page = unpacked / MANPAGE
    res = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "80"})
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr
    text = res.stdout
    # Joined lines, no hyphenation: terms wrapped over two lines still match.
    flat = re.sub(r"\s+", " ", text)
    for section in MAN_SECTIONS:
        assert re.search(rf"^{section}$", text, re.M), f"section {section} missing"
    options = text[text.index("\nOPTIONS\n"):text.index("\nMODULE TYPES PROVIDED\n")]
    assert set(MAN_OPTIONS) <= set(source_options()), source_options()
    for option in source_options():
        assert re.search(rf"^ {{7}}{re.escape(option)}", options, re.M), (
            f"option {option} (csrc/options.c) is not documented in packaging/debian/pam_unshare.8"
        )
    for term in MAN_TERMS:
        assert term in flat, f"{term} not in the man page"
    for default in ("fail (the default)", "slave (the default)", "linger (the default)",
                    "session (the default)",
                    "Default: root", "Default: off"):
        assert default in flat, default


# --------------------------------------------------------------------------- #
# Installed in a systemd container
# --------------------------------------------------------------------------- #


@dataclass
class PackageHost:
    ct: SystemdContainer
    pam_d: Dict[str, str]  # /etc/pam.d before the package was ever installed
    pam_state: Dict[str, str]  # /var/lib/pam (pam-auth-update's record of profiles)
    bob_pid: int  # a process of another user, outside any session


def snapshot(ct: SystemdContainer, *dirs: str) -> Dict[str, str]:
    res = ct.run(["python3", "-c", SNAPSHOT_SCRIPT, *dirs], check=True)
    return json.loads(res.stdout)


def sh(ct: SystemdContainer, script: str, timeout: float = 120.0) -> str:
    """Run SCRIPT in the container as root with debconf non-interactive; fail with its output."""
    res = ct.run(NONINTERACTIVE + script, timeout=timeout)
    if res.returncode != 0:
        pytest.fail(f"{script!r} failed (rc {res.returncode}):\n{res.stdout}\n{res.stderr}\n"
                    f"journal:\n{ct.journal(None, '-n', '30')}")
    return res.stdout


def session_lines(ct: SystemdContainer, path: str) -> List[List[str]]:
    return [ln.split() for ln in ct.read_file(path).splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


def package_status(ct: SystemdContainer) -> str:
    res = ct.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", PACKAGE])
    return res.stdout.strip() if res.returncode == 0 else "not-installed"


def assert_pam_d_restored(host: PackageHost) -> None:
    ct = host.ct
    assert package_status(ct) == "not-installed"
    assert ct.run(["test", "-e", "/" + MODULE]).returncode != 0
    assert ct.run(["test", "-e", "/" + PROFILE]).returncode != 0
    after = snapshot(ct, "/etc/pam.d")
    changed = {k: (host.pam_d.get(k), after.get(k)) for k in host.pam_d.keys() | after.keys()
               if host.pam_d.get(k) != after.get(k)}
    assert changed == {}, changed
    assert snapshot(ct, "/var/lib/pam") == host.pam_state


@contextlib.contextmanager
def booted_package_host(deb: Path, log: Path, suite: str = SUITE) -> Iterator[PackageHost]:
    """A systemd container of its own (installing into the shared one would change the stacks
    tests/test_systemd_host.py checks), with the .deb copied in, test users, an ssh key for
    pu_alice and root, sudo without a password for pu_alice, and a long-running process of
    pu_bob. Powered off on the way out."""
    reason = systemd_container_missing()
    if reason:
        unavailable(reason)
    rootfs = build_rootfs(Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR), suite=suite)
    with SystemdContainer(rootfs, log_path=log) as ct:
        print(f"\ncontainer {ct.name} booted in {ct.boot_seconds:.1f}s, log {log}",
              file=sys.stderr)
        pam_d = snapshot(ct, "/etc/pam.d")
        pam_state = snapshot(ct, "/var/lib/pam")
        assert package_status(ct) == "not-installed"
        assert not [k for k, v in pam_d.items() if "pam_unshare" in k]
        ct.write_file(DEB_IN_CONTAINER, deb.read_bytes(), 0o644)
        sh(ct, f"useradd -m -s /bin/bash {ALICE} && useradd -m -s /bin/bash {BOB}")
        sh(ct, f"ssh-keygen -q -t ed25519 -N '' -f {SSH_KEY} && d=~{ALICE}/.ssh && "
               f'mkdir -m 700 "$d" && cp {SSH_KEY}.pub "$d/authorized_keys" && '
               f'chown -R {ALICE}: "$d" && mkdir -p -m 700 /root/.ssh && '
               f"cp {SSH_KEY}.pub /root/.ssh/authorized_keys")
        sh(ct, f"echo '{ALICE} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/pu && "
               "chmod 440 /etc/sudoers.d/pu")
        # runuser's stack has no common-session: pu_bob's sleep stays in the container's
        # namespace, where a namespaced session must not see it.
        sh(ct, f"setsid runuser -u {BOB} -- sleep 3600 </dev/null >/dev/null 2>&1 &")
        deadline = time.monotonic() + 10
        while (res := ct.run(["pgrep", "-u", BOB, "-x", "sleep"])).returncode != 0:
            assert time.monotonic() < deadline, "pu_bob's sleep did not start"
            time.sleep(0.1)
        bob_pid = int(res.stdout.split()[0])
        try:
            yield PackageHost(ct, pam_d, pam_state, bob_pid)
        finally:
            # At poweroff, systemd-shutdown sometimes waits for runuser and this sleep until
            # nspawn gives up (30 s): end them first.
            ct.run(["kill", "-KILL", str(bob_pid)])


@pytest.fixture(scope="module")
def package_host(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageHost]:
    """One booted container for this module's install-enable-login tests."""
    with booted_package_host(deb, tmp_path_factory.mktemp("deb-container") / "nspawn.log") as host:
        yield host


@pytest.fixture()
def enabled(package_host: PackageHost) -> Iterator[PackageHost]:
    """The package installed and enabled; purged (and /etc/pam.d checked) afterwards."""
    ct = package_host.ct
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    try:
        yield package_host
    finally:
        sh(ct, f"apt-get purge -y {PACKAGE}")
    assert_pam_d_restored(package_host)


def assert_namespaced_session(output: str, what: str) -> None:
    """OUTPUT of `cat /proc/1/comm; ps -e -o pid=,user=,comm=` run as pu_alice."""
    lines = output.replace("\r", "").strip().splitlines()
    assert lines and lines[0] == "pam_unshare", f"{what}: {output!r}"
    procs = [ln.split(None, 2) for ln in lines[1:]]
    assert ["1", "root", "pam_unshare"] in procs, f"{what}: {output!r}"
    users = {user for _, user, _ in procs}
    comms = {comm for _, _, comm in procs}
    assert users <= {"root", ALICE}, f"{what}: foreign users in {output!r}"
    assert {comm for _, user, comm in procs if user == "root"} == {"pam_unshare"}, output
    assert not comms & {"systemd", "systemd-journal", "systemd-logind", "dbus-daemon", "sleep"}


PROBE = "cat /proc/1/comm; ps -e -o pid=,user=,comm="


def test_install_enable_login_disable_remove_purge(package_host: PackageHost):
    """The administrator's whole path, in order; /etc/pam.d ends byte-identical."""
    ct = package_host.ct
    timings: Dict[str, float] = {}

    def step(name: str, script: str) -> str:
        t0 = time.monotonic()
        out = sh(ct, script)
        timings[name] = time.monotonic() - t0
        return out

    step("dpkg -i", f"dpkg -i {DEB_IN_CONTAINER}")
    assert package_status(ct) == "installed"
    # Registered with pam-auth-update, but Default: no: not in any stack yet.
    assert PROFILE_NAME in ct.read_file("/var/lib/pam/seen").split()
    assert snapshot(ct, "/etc/pam.d") == package_host.pam_d
    assert "pam_unshare" not in ct.read_file("/etc/pam.d/common-session")

    step("enable", f"pam-auth-update --enable {PROFILE_NAME}")
    lines = session_lines(ct, "/etc/pam.d/common-session")
    ours = ["session", "required", "pam_unshare.so"]
    assert ours in lines, lines
    modules = [ln[2] for ln in lines if ln[0] == "session"]
    # After pam_unix and pam_systemd, last of the stack.
    assert modules.index("pam_unshare.so") > modules.index("pam_systemd.so"), lines
    assert modules[-1] == "pam_unshare.so", lines
    # Interactive only: nothing else changed.
    changed = {k for k, v in snapshot(ct, "/etc/pam.d").items() if package_host.pam_d.get(k) != v}
    assert changed == {"/etc/pam.d/common-session"}, changed

    res = ct.run(["su", "-", ALICE, "-c", "cat /proc/1/comm"], timeout=60)
    assert (res.returncode, res.stdout) == (0, "pam_unshare\n"), res
    res = ct.run(["su", "-", ALICE, "-c", PROBE], timeout=60)
    assert res.returncode == 0, res
    assert_namespaced_session(res.stdout, "su -")
    # The control: pu_bob's sleep is there, outside the session.
    assert ct.read_file(f"/proc/{package_host.bob_pid}/comm").strip() == "sleep"
    # The container outside any session is untouched.
    assert ct.read_file("/proc/1/comm").strip() == "systemd"
    assert ct.run(["findmnt", "-no", "PROPAGATION", "/"], check=True).stdout.strip() == "shared"

    step("disable", f"pam-auth-update --disable {PROFILE_NAME}")
    assert snapshot(ct, "/etc/pam.d") == package_host.pam_d
    res = ct.run(["su", "-", ALICE, "-c", "cat /proc/1/comm"], timeout=60)
    assert (res.returncode, res.stdout) == (0, "systemd\n"), res

    step("apt-get remove", f"apt-get remove -y {PACKAGE}")
    # No conffiles: remove leaves only postrm's purge step; dpkg -P must still be clean.
    step("dpkg -P", f"dpkg -P {PACKAGE}")
    assert_pam_d_restored(package_host)
    print(f"\nlifecycle steps: {timings}", file=sys.stderr)


def test_purge_while_enabled(package_host: PackageHost):
    """Removing the package without disabling the profile first takes the line out (prerm)."""
    ct = package_host.ct
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    assert "pam_unshare.so" in ct.read_file("/etc/pam.d/common-session")
    sh(ct, f"apt-get purge -y {PACKAGE}")
    assert_pam_d_restored(package_host)
    res = ct.run(["su", "-", ALICE, "-c", "cat /proc/1/comm"], timeout=60)
    assert (res.returncode, res.stdout) == (0, "systemd\n"), res


def test_reinstall_keeps_the_choice(enabled: PackageHost):
    """An upgrade (here: the same version again) neither drops nor duplicates the line."""
    ct = enabled.ct
    before = ct.read_file("/etc/pam.d/common-session")
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER}")
    assert ct.read_file("/etc/pam.d/common-session") == before
    assert before.count("pam_unshare.so") == 1


@dataclass(frozen=True)
class Entry:
    name: str
    argv: List[str]
    namespaced: bool
    why: str = ""


SSH = ["ssh", "-i", SSH_KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
       "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"{ALICE}@127.0.0.1"]
ENTRIES = [
    Entry("su", ["su", ALICE, "-c", PROBE], True),
    Entry("su -", ["su", "-", ALICE, "-c", PROBE], True),
    Entry("sudo -i", ["sudo", "-i", "-u", ALICE, "sh", "-c", PROBE], True),
    # sshd's stack goes on after common-session (pam_motd, pam_mail, pam_limits, pam_env,
    # pam_selinux): the profile's line is not its last, and it must work all the same.
    Entry("ssh", [*SSH, PROBE], True),
    # The documented limits of an interactive-only profile.
    Entry("sudo", ["sudo", "-u", ALICE, "sh", "-c", PROBE], False,
          "Debian's sudo stack includes common-session-noninteractive"),
    Entry("su - root", ["su", "-", "root", "-c", PROBE], False, "root is exempt by default"),
]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_entry_paths(enabled: PackageHost, entry: Entry):
    ct = enabled.ct
    res = ct.run(entry.argv, timeout=60)
    detail = f"{entry.name}: rc {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert res.returncode == 0, f"{detail}\njournal:\n{ct.journal(None, '-n', '30')}"
    if entry.namespaced:
        assert_namespaced_session(res.stdout, entry.name)
    else:
        assert res.stdout.splitlines()[0] == "systemd", f"{entry.why}: {detail}"


def test_no_errors_logged(enabled: PackageHost):
    """Sessions through the packaged profile log nothing at err or worse from PAM modules."""
    ct = enabled.ct
    ct.run(["su", "-", ALICE, "-c", "true"], check=True)
    ct.run([*SSH, "true"], check=True, timeout=60)
    errors = ct.journal(None, "-p", "err")
    assert [ln for ln in errors.splitlines() if re.search(r"pam_(unshare|systemd)", ln)] == []


# --------------------------------------------------------------------------- #
# Removal never leaves a PAM stack naming a missing module (issue 20, item 1)
# --------------------------------------------------------------------------- #

# Where libpam looks for a module named without a path (Debian's libpam, merged /usr).
MODULE_DIR = "/lib/x86_64-linux-gnu/security"
SSH_ROOT = [*SSH[:-1], "root@127.0.0.1"]
# Every way in that must survive any package operation: su, sudo and ssh, as root and as a user.
LOGINS = {
    "su - root": ["su", "-", "root", "-c", "true"],
    "sudo as root": ["sudo", "-n", "-u", "root", "true"],
    "ssh root": [*SSH_ROOT, "true"],
    f"su - {ALICE}": ["su", "-", ALICE, "-c", "true"],
    f"sudo by {ALICE}": ["su", ALICE, "-c", "sudo -n true"],
    f"ssh {ALICE}": [*SSH, "true"],
}
# A line as an administrator adds by hand: tabs, the module's full path, an option.
HAND_LINE = f"session\trequired\t/{MODULE} debug\n"


def missing_modules(ct: SystemdContainer) -> List[str]:
    """Lines of any file in /etc/pam.d whose module does not exist: "FILE:LINE: MODULE"."""
    files = ct.run(["find", "/etc/pam.d", "-type", "f"], check=True).stdout.split()
    named: Dict[str, List[str]] = {}
    for path in files:
        for rule in pamd.parse(ct.read_file(path)).rules:
            if rule.included is None:
                module = rule.module if rule.module.startswith("/") else \
                    f"{MODULE_DIR}/{rule.module}"
                named.setdefault(module, []).append(f"{path}:{rule.number}: {rule.module}")
    res = ct.run(["sh", "-c", 'for m; do [ -e "$m" ] || echo "$m"; done', "sh", *named],
                 check=True)
    return [where for module in res.stdout.split() for where in named[module]]


def assert_everyone_can_log_in(ct: SystemdContainer, after: str) -> None:
    """su, sudo and ssh as root and as pu_alice all succeed, and no PAM file names a missing
    module."""
    missing = missing_modules(ct)
    failed = {}
    for name, argv in LOGINS.items():
        res = ct.run(argv, timeout=60)
        if res.returncode != 0:
            failed[name] = f"rc {res.returncode}: {res.stderr.strip()}"
    assert (missing, failed) == ([], {}), (
        f"after {after}: PAM lines name missing modules: {missing}; logins that fail: {failed}")


CLI_DIR = "/opt/pu-cli"
CLI = ["env", f"PYTHONPATH={CLI_DIR}", "python3", "-P", "-m", "pam_unshare.cli"]


def install_cli(ct: SystemdContainer) -> None:
    """The installed CLI (the package these tests import) and what it needs at run time (cffi),
    copied into the container: Debian 12 on both sides, the same Python."""
    site = Path(pamd.__file__).resolve().parent.parent
    names = ["pam_unshare", "cffi", "pycparser", *(p.name for p in site.glob("_cffi_backend*"))]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name in names:
            tar.add(site / name, arcname=name,
                    filter=lambda info: None if "__pycache__" in info.name else info)
    ct.run(["mkdir", "-p", CLI_DIR], check=True)
    ct.run(["tar", "-x", "-C", CLI_DIR], input=archive.getvalue(), check=True)


def cli_enable(ct: SystemdContainer, *services: str) -> str:
    """`pam-unshare enable SERVICE...` in the container, for real."""
    res = ct.run([*CLI, "enable", *services], timeout=60)
    assert res.returncode == 0, f"pam-unshare enable failed: {res.stdout}{res.stderr}"
    return res.stdout + res.stderr


def changed_files(host: PackageHost) -> Dict[str, tuple]:
    """What differs in /etc/pam.d from before the install, but the CLI's backups (new files
    FILE.pam-unshare.bak, the CLI's and not the package's to remove), which must be FILE's
    original bytes."""
    after = snapshot(host.ct, "/etc/pam.d")
    changed = {k: (host.pam_d.get(k), after.get(k)) for k in host.pam_d.keys() | after.keys()
               if host.pam_d.get(k) != after.get(k)}
    for path, (before, now) in list(changed.items()):
        original = path.removesuffix(pamd.BACKUP_SUFFIX)
        if path != original and before is None and now == host.pam_d.get(original):
            del changed[path]
    return changed


@pytest.fixture()
def fresh_host(deb: Path, tmp_path: Path) -> Iterator[PackageHost]:
    """A container of its own for each removal path: every one starts from a clean host."""
    with booted_package_host(deb, tmp_path / "nspawn.log") as host:
        yield host


def test_remove_takes_out_lines_pam_auth_update_does_not_manage(fresh_host: PackageHost):
    """The profile's line, `pam-unshare enable`'s in sudo and a hand-written one in runuser all
    go on `apt-get remove`: before, sudo kept naming the deleted module and failed for everyone,
    root too. Logins are checked after enabling, after remove and after purge."""
    ct = fresh_host.ct
    install_cli(ct)
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    # su and sshd already run the module through common-session: the CLI skips them.
    cli_enable(ct, "su", "sudo", "sshd")
    ct.write_file("/etc/pam.d/runuser", (ct.read_file("/etc/pam.d/runuser") + HAND_LINE).encode())
    res = ct.run(["sudo", "-n", "-u", ALICE, "cat", "/proc/1/comm"], check=True)
    assert res.stdout == "pam_unshare\n", "the CLI's line in sudo is not live"
    assert_everyone_can_log_in(ct, "enabling")

    out = ct.run(NONINTERACTIVE + f"apt-get remove -y {PACKAGE} 2>&1", timeout=120)
    assert out.returncode == 0, out.stdout
    # "config-files": no conffile is left, but postrm (it reloads the bus) runs again at purge.
    assert package_status(ct) == "config-files"
    assert ct.run(["test", "-e", "/" + DBUS_POLICY]).returncode != 0, "the D-Bus policy stayed"
    assert_everyone_can_log_in(ct, "apt-get remove")
    assert changed_files(fresh_host) == {}, "/etc/pam.d is not as it was before the install"
    # The admin is told which lines went.
    assert "/etc/pam.d/sudo:" in out.stdout and "/etc/pam.d/runuser:" in out.stdout, out.stdout
    # Nothing is left for purge to do but postrm (no conffiles), and nothing it does locks
    # anyone out.
    sh(ct, f"dpkg -P {PACKAGE}")
    assert_everyone_can_log_in(ct, "dpkg -P")
    assert changed_files(fresh_host) == {}


def test_purge_with_locally_modified_common_session(fresh_host: PackageHost):
    """pam-auth-update leaves a locally modified common-session alone ("Local modifications
    ..., not updating", exit 0); the package's own line must go all the same, and only it."""
    ct = fresh_host.ct
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    # A line in the block pam-auth-update manages that no profile of its own wrote.
    end = "# end of pam-auth-update config\n"
    edited = ct.read_file("/etc/pam.d/common-session").replace(
        end, "session\toptional\tpam_umask.so\n" + end)
    assert "pam_umask" in edited
    ct.write_file("/etc/pam.d/common-session", edited.encode())

    out = ct.run(NONINTERACTIVE + f"apt-get purge -y {PACKAGE} 2>&1", timeout=120)
    assert out.returncode == 0, out.stdout
    assert "Local modifications to /etc/pam.d/common-*, not updating" in out.stdout, out.stdout
    assert_everyone_can_log_in(ct, "apt-get purge with a locally modified common-session")
    expected = pamd.without_session_line(edited)
    assert "pam_unshare" not in expected
    assert ct.read_file("/etc/pam.d/common-session") == expected
    assert set(changed_files(fresh_host)) == {"/etc/pam.d/common-session"}


def repacked_with_version(deb: Path, version: str, out: Path) -> Path:
    """DEB with another version in its control file: a real upgrade for dpkg, without a second
    build."""
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    text = re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
    control.write_text(text)
    path = out / f"{PACKAGE}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(path)], check=True,
                   capture_output=True)
    return path


def test_upgrade_and_reinstall_keep_the_lines(fresh_host: PackageHost, deb: Path,
                                              tmp_path: Path):
    """Upgrade and reinstall run prerm with "upgrade": every line stays, the new module is in
    place, logins work; the purge afterwards still leaves /etc/pam.d as it was."""
    ct = fresh_host.ct
    newer = repacked_with_version(deb, debian_version(project_version()) + "+1", tmp_path)
    ct.write_file("/root/newer.deb", newer.read_bytes())
    install_cli(ct)
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    cli_enable(ct, "sudo")
    enabled = snapshot(ct, "/etc/pam.d")
    for step in ("dpkg -i /root/newer.deb", "dpkg -i /root/newer.deb"):  # upgrade, reinstall
        sh(ct, step)
        assert snapshot(ct, "/etc/pam.d") == enabled, f"{step} changed /etc/pam.d"
        assert_everyone_can_log_in(ct, step)
        res = ct.run(["su", "-", ALICE, "-c", "cat /proc/1/comm"], check=True)
        assert res.stdout == "pam_unshare\n", f"after {step} the profile is no longer live"
    sh(ct, f"apt-get purge -y {PACKAGE}")
    assert_everyone_can_log_in(ct, "apt-get purge after the upgrade")
    assert changed_files(fresh_host) == {}


def test_removal_refused_for_lines_it_will_not_edit(fresh_host: PackageHost):
    """A PAM file that is a symlink out of /etc/pam.d is not rewritten: the removal is refused
    before anything changes, naming the line; once it is gone, the removal goes through."""
    ct = fresh_host.ct
    sh(ct, f"dpkg -i {DEB_IN_CONTAINER} && pam-auth-update --enable {PROFILE_NAME}")
    sh(ct, "cp /etc/pam.d/sudo /root/pu-linked && echo 'session required pam_unshare.so' "
           ">> /root/pu-linked && ln -s /root/pu-linked /etc/pam.d/pu-linked")
    enabled = snapshot(ct, "/etc/pam.d")
    out = ct.run(NONINTERACTIVE + f"apt-get remove -y {PACKAGE} 2>&1", timeout=120)
    assert out.returncode != 0, "apt-get remove went through with a line naming the module " \
        "in /etc/pam.d/pu-linked, a symlink out of /etc/pam.d"
    assert "/etc/pam.d/pu-linked -> /root/pu-linked:" in out.stdout, out.stdout
    assert package_status(ct) == "installed"
    assert snapshot(ct, "/etc/pam.d") == enabled
    assert_everyone_can_log_in(ct, "a refused removal")
    sh(ct, f"rm /etc/pam.d/pu-linked && apt-get remove -y {PACKAGE}")
    assert_everyone_can_log_in(ct, "apt-get remove")
    assert changed_files(fresh_host) == {}


# --------------------------------------------------------------------------- #
# The CLI's package, pam-unshare (issue 16)
# --------------------------------------------------------------------------- #

CLI_PACKAGE = "pam-unshare"
CLI_MANPAGE = "usr/share/man/man1/pam-unshare.1.gz"
COMPLETION = "usr/share/bash-completion/completions/pam-unshare"
CLI_LINK = "usr/lib/python3/dist-packages/pam_unshare/lib/pam_unshare.so"
# Another helper adds it; the man page documents it already.
PLANNED_COMMANDS = {"verify"}
DEBS_IN_CONTAINER = "/root/debs"


@pytest.fixture(scope="session")
def cli_deb(deb: Path) -> Path:
    """build-deb builds both packages; the CLI's is next to the module's."""
    path = deb.parent / f"{CLI_PACKAGE}_{debian_version(project_version())}_amd64.deb"
    assert path.is_file(), sorted(deb.parent.iterdir())
    return path


def test_cli_lintian_clean(cli_deb: Path):
    assert_lintian_clean(cli_deb)


def test_cli_deb_contents(cli_deb: Path, tmp_path: Path):
    assert deb_field(cli_deb, "Version") == debian_version(project_version())
    depends = [d.strip() for d in deb_field(cli_deb, "Depends").split(",")]
    # Exactly the module of this build, and Debian's Python packages: no venv, no pip.
    assert f"{PACKAGE} (= {debian_version(project_version())})" in depends, depends
    assert "python3-cffi-backend" in depends, depends
    assert not [d for d in depends if "pip" in d or "venv" in d], depends
    subprocess.run(["dpkg-deb", "-x", str(cli_deb), str(tmp_path)], check=True)
    # One module on the system: the CLI's is a link to libpam-unshare's.
    link = tmp_path / CLI_LINK
    assert link.is_symlink(), sorted(str(p) for p in tmp_path.rglob("*"))
    assert os.path.normpath(link.parent / os.readlink(link)) == str(tmp_path / MODULE)
    assert (tmp_path / "usr/bin/pam-unshare").stat().st_mode & 0o111
    assert (tmp_path / CLI_MANPAGE).is_file() and (tmp_path / COMPLETION).is_file()
    assert not list(tmp_path.rglob("security/*")), "the module belongs to libpam-unshare"


def cli_commands() -> set:
    from pam_unshare import cli

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return set(subparsers.choices) | PLANNED_COMMANDS


def test_cli_man_page(cli_deb: Path, tmp_path: Path):
    """pam-unshare(1) documents every command of the CLI, the exit statuses and examples."""
    require_tools("man")
    subprocess.run(["dpkg-deb", "-x", str(cli_deb), str(tmp_path)], check=True)
    res = subprocess.run(["man", "--warnings", "-l", str(tmp_path / CLI_MANPAGE)],
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "80"})
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    text = res.stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS",
                    "EXAMPLES", "FILES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), f"section {section} missing"
    commands = text[text.index("\nCOMMANDS\n"):text.index("\nOPTIONS\n")]
    documented = set(re.findall(r"^ {7}([a-z][a-z-]*)\b", commands, re.M))
    assert documented == cli_commands(), "pam-unshare(1) and the CLI's commands differ"
    exits = text[text.index("\nEXIT STATUS\n"):text.index("\nEXAMPLES\n")]
    for status in ("0", "1", "2"):
        assert re.search(rf"^ {{7}}{status} ", exits, re.M), f"exit status {status}"


def ours_on_disk(ct: SystemdContainer) -> List[str]:
    """Every path on the container's root file system named after the project, but man-db's
    cache of formatted pages (/var/cache/man/cat*), which man-db's daily job expires."""
    res = ct.run(["find", "/", "-xdev", "(", "-name", "*pam_unshare*", "-o", "-name",
                  "*pam-unshare*", ")", "-not", "-path", f"{DEBS_IN_CONTAINER}/*",
                  "-not", "-path", "/var/cache/man/cat*"], check=True)
    return sorted(res.stdout.split())


def cli(ct: SystemdContainer, *args: str, status: int = 0) -> str:
    res = ct.run(["pam-unshare", *args], timeout=60)
    assert res.returncode == status, f"pam-unshare {' '.join(args)}: rc {res.returncode}\n" \
        f"{res.stdout}{res.stderr}"
    return res.stdout + res.stderr


def test_cli_package_install_use_purge(fresh_host: PackageHost, deb: Path, cli_deb: Path,
                                       tmp_path: Path):
    """`apt install` of both .debs, then the CLI works with no other step: status, check,
    sessions, enter, the man page, completion; purge leaves no file of ours."""
    ct = fresh_host.ct
    timings: Dict[str, float] = {}
    t0 = time.monotonic()
    ct.run(["mkdir", "-p", DEBS_IN_CONTAINER], check=True)
    for path in (deb, cli_deb):
        ct.write_file(f"{DEBS_IN_CONTAINER}/{path.name}", path.read_bytes())
    debs = f"{DEBS_IN_CONTAINER}/{deb.name} {DEBS_IN_CONTAINER}/{cli_deb.name}"
    before = ours_on_disk(ct)
    # man-db is not ours to depend on: the admin's, installed the same way.
    seeded = seed_apt(ct, tmp_path, f"man-db {debs}")
    # The CLI's one dependency outside python3: fetched with the packages, or (the test hosts'
    # images carry it for the CLI) already installed.
    present = ct.run(["dpkg-query", "-W", "python3-cffi-backend"]).returncode == 0
    assert present or "python3-cffi-backend" in seeded, seeded
    timings["seed apt"] = time.monotonic() - t0

    t0 = time.monotonic()
    sh(ct, "apt-get install -y man-db")
    sh(ct, f"apt-get install -y {debs}")
    timings["apt install"] = time.monotonic() - t0
    assert package_status(ct) == "installed"

    t0 = time.monotonic()
    assert cli(ct, "--version") == f"pam-unshare {project_version()}\n"
    assert cli(ct, "module-path") == f"/{MODULE}\n"
    facts = json.loads(cli(ct, "status", "--json"))
    module = facts["module"]
    assert module["version"] == project_version()
    assert module["built"]["path"] == f"/{MODULE}"
    assert module["installed"]["present"] and module["installed"]["same_as_built"], module
    assert module["installed"]["problem"] is None, module
    assert facts["kernel"]["unshare"] == "works", facts["kernel"]
    assert cli(ct, "check") == "ok: no file in /etc/pam.d uses pam_unshare.so\n"
    # dpkg owns the module: the CLI does not delete it.
    assert "libpam-unshare package" in cli(ct, "uninstall", status=2)

    cli(ct, "enable", "su", "sudo")
    assert cli(ct, "check") == "ok: pam_unshare.so is enabled for su, su-l, sudo\n"
    enabled = json.loads(cli(ct, "status", "--json"))["enabled"]
    assert {e["service"] for e in enabled} >= {"su", "sudo"}, enabled

    sh(ct, f"setsid su - {ALICE} -c 'exec sleep 300' </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while not (found := [s for s in json.loads(cli(ct, "sessions", "--json"))
                         if s["user"] == ALICE]):
        assert time.monotonic() < deadline, cli(ct, "sessions")
        time.sleep(0.2)
    inside = cli(ct, "enter", str(found[0]["id"]), "--", "ps", "-e", "-o", "comm=").split()
    assert inside[0] == "pam_unshare" and "sleep" in inside and "systemd" not in inside, inside
    ct.run(["pkill", "-u", ALICE, "-x", "sleep"])
    # The profile too: sshd runs pam_motd ... pam_selinux after common-session, none of which
    # needs /proc/self without SELinux: check warns and passes.
    sh(ct, f"pam-auth-update --enable {PROFILE_NAME}")
    out = cli(ct, "check")
    assert out.startswith("warning: /etc/pam.d/sshd: pam_motd.so"), out
    assert [ln for ln in out.splitlines() if not ln.startswith("warning:")] == [], out
    timings["commands"] = time.monotonic() - t0

    page = ct.run(["man", "pam-unshare"], timeout=60)
    assert page.returncode == 0 and "EXIT STATUS" in page.stdout, page.stderr
    assert ct.run(["man", "-w", "8", "pam_unshare"], timeout=60).returncode == 0
    complete = ("source /usr/share/bash-completion/completions/pam-unshare; "
                'COMP_WORDS=(pam-unshare "$1" "$2"); COMP_CWORD=$3; _pam_unshare; '
                'echo "${COMPREPLY[*]}"')
    for words, expected in ((("s", "", "1"), "sessions status"),
                            (("enable", "sud", "2"), "sudo sudo-i"),
                            (("status", "--j", "2"), "--json")):
        res = ct.run(["bash", "-c", complete, "bash", *words], check=True)
        assert sorted(res.stdout.split()) == expected.split(), (words, res.stdout)

    installed = ct.run(["dpkg", "-L", PACKAGE, CLI_PACKAGE], check=True).stdout.split()
    t0 = time.monotonic()
    sh(ct, f"apt-get remove -y {CLI_PACKAGE} {PACKAGE}")
    sh(ct, f"apt-get purge -y {CLI_PACKAGE} {PACKAGE}")
    timings["remove, purge"] = time.monotonic() - t0
    assert package_status(ct) == "not-installed"
    assert ct.run(["dpkg-query", "-W", CLI_PACKAGE]).returncode != 0
    assert ours_on_disk(ct) == before
    # Directories others share (/usr/share/man/man1, ...) stay; ours are in ours_on_disk.
    left = ct.run(["sh", "-c", 'for p; do if [ -L "$p" ] || { [ -e "$p" ] && [ ! -d "$p" ]; }; '
                   'then echo "$p"; fi; done', "sh", *installed], check=True).stdout.split()
    assert left == [], left
    assert changed_files(fresh_host) == {}
    print(f"\nCLI package steps: { {k: round(v, 1) for k, v in timings.items()} }",
          file=sys.stderr)


def test_both_packages_on_debian_13(deb: Path, cli_deb: Path, tmp_path: Path):
    """The same two .debs (built on Debian 12) on Debian 13: install, enable with the profile,
    a namespaced login, check, disable, remove, purge; /etc/pam.d ends byte-identical."""
    with booted_package_host(deb, tmp_path / "nspawn.log", suite="trixie") as host:
        ct = host.ct
        ct.write_file(f"/root/{cli_deb.name}", cli_deb.read_bytes(), 0o644)
        both = f"{DEB_IN_CONTAINER} /root/{cli_deb.name}"
        sh(ct, f"dpkg -i {both}")
        assert package_status(ct) == "installed"
        sh(ct, f"pam-auth-update --enable {PROFILE_NAME}")
        res = ct.run(["su", "-", ALICE, "-c", PROBE], timeout=60)
        assert res.returncode == 0, res
        assert_namespaced_session(res.stdout, "su - on Debian 13")
        check = ct.run(["pam-unshare", "check"], timeout=60)
        assert check.returncode == 0, check
        assert "common-session" in check.stdout, check
        sh(ct, f"pam-auth-update --disable {PROFILE_NAME}")
        sh(ct, f"apt-get remove -y {CLI_PACKAGE} {PACKAGE}")
        sh(ct, f"dpkg -P {CLI_PACKAGE} {PACKAGE}")
        assert_pam_d_restored(host)
