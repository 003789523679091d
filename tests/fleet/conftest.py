"""Three Debian 12 container hosts (hosts/tiers.py, without the module) as an Ansible inventory,
booted once per test session, and a way to run packaging/ansible/site.yml against them. Their apt
cache holds what the packages depend on beyond the image (seed_mirror), as a mirror would.

The hosts answer Ansible on their admin sshd (port 2222, UsePAM no), never through an sshd whose
sessions the module namespaces: as root, or as BECOME_USER, an account of its own that becomes
root through sudo (Ansible's become), whose stack /etc/pam.d/sudo is one the role changes.
ansible-core is the test extra's (ansible-playbook next to this Python); no collection is
installed or downloaded: the role uses ansible.builtin only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import require, require_root, require_tools
from hosts.fixtures import CACHE_ENV
from hosts.systemd_container import DEFAULT_CACHE_DIR
from hosts.tiers import ADMIN_PORT, ContainerTier
from pam_unshare_testsupport.debian_package import ROOT, seed_apt

ANSIBLE_DIR = ROOT / "packaging" / "ansible"
PLAYBOOK = ANSIBLE_DIR / "site.yml"
HOSTS = ("pu-fleet-1", "pu-fleet-2", "pu-fleet-3")
GROUP = "pam_unshare"
# Logs in with the admin key and becomes root through sudo without a password.
BECOME_USER = "pu_admin"
BECOME_VARS = {"ansible_user": BECOME_USER, "ansible_become": True,
               "ansible_become_method": "sudo"}
# Its password field is "*" (no password, not locked): with UsePAM no, sshd refuses a key login
# to an account whose password field starts with "!".
ADD_BECOME_USER = f"""
getent passwd {BECOME_USER} >/dev/null || useradd -m -u 62020 -U -s /bin/sh {BECOME_USER}
usermod -p '*' {BECOME_USER}
install -d -m 700 -o {BECOME_USER} -g {BECOME_USER} /home/{BECOME_USER}/.ssh
install -m 600 -o {BECOME_USER} -g {BECOME_USER} /root/admin.pub \
    /home/{BECOME_USER}/.ssh/authorized_keys
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' {BECOME_USER} > /etc/sudoers.d/{BECOME_USER}
chmod 440 /etc/sudoers.d/{BECOME_USER}
visudo -c -q
"""
PLAYBOOK_TIMEOUT = 600
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                   r"\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)
RECAP_FIELDS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")

# Every file, directory and link below the given trees, as {path: description}.
DIGEST_SCRIPT = r"""
import hashlib, json, os, stat, sys
tree = {}
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            owner = "%o %d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                tree[path] = "link " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                tree[path] = "dir " + owner
            else:
                with open(path, "rb") as f:
                    tree[path] = "file %s %s" % (owner, hashlib.sha256(f.read()).hexdigest())
json.dump(tree, sys.stdout, sort_keys=True)
"""


@dataclass
class PlaybookRun:
    argv: List[str]
    returncode: int
    output: str
    seconds: float
    recap: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def stats(self, host: str) -> Dict[str, int]:
        assert host in self.recap, f"{host} is not in the PLAY RECAP:\n{self.tail()}"
        return self.recap[host]

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


class Fleet:
    """The booted hosts, their inventory, and ansible-playbook against them."""

    def __init__(self, workdir: Path, deb: Path, tiers: Sequence[ContainerTier]) -> None:
        self.workdir = workdir
        self.deb = deb
        # build-deb writes the command line's package next to the module's.
        self.cli_deb = deb.parent / deb.name.replace("libpam-unshare_", "pam-unshare_", 1)
        self.tiers = {tier.name: tier for tier in tiers}
        self.names = [tier.name for tier in tiers]
        self.inventory = workdir / "inventory.yml"
        self.pristine: Dict[str, Dict[str, str]] = {}
        self.runs: List[PlaybookRun] = []
        bindir = Path(sys.executable).parent
        self.ansible_playbook = bindir / "ansible-playbook"
        self.env = dict(os.environ)
        self.env.update({
            # ansible-inventory (testinfra's ansible backend) and ansible-playbook from this venv
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_HOME": str(workdir / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
            # A master connection outlives ansible-playbook only briefly.
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=15s",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
        })

    def write_inventory(self) -> None:
        hosts: Dict[str, Dict[str, Any]] = {}
        for name, tier in self.tiers.items():
            hosts[name] = {
                "ansible_host": tier.address,
                "ansible_port": ADMIN_PORT,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(tier.key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                           "-o UserKnownHostsFile=/dev/null",
            }
        inventory = {GROUP: {"hosts": hosts, "vars": {"pam_unshare_deb": str(self.deb)}}}
        # JSON is YAML: the yaml inventory plugin (and testinfra's ansible backend) read it.
        self.inventory.write_text(json.dumps(inventory, indent=2) + "\n")

    def playbook(self, *args: str, extra_vars: Mapping[str, Any] | None = None,
                 limit: str | None = None) -> PlaybookRun:
        """ansible-playbook -i INVENTORY site.yml [ARGS], run in packaging/ansible."""
        argv = [str(self.ansible_playbook), "-i", str(self.inventory), str(PLAYBOOK), *args]
        if extra_vars:
            argv += ["-e", json.dumps(dict(extra_vars))]
        if limit:
            argv += ["--limit", limit]
        started = time.monotonic()
        res = subprocess.run(argv, cwd=ANSIBLE_DIR, env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=PLAYBOOK_TIMEOUT)
        run = PlaybookRun(argv, res.returncode, res.stdout, time.monotonic() - started)
        for match in RECAP.finditer(res.stdout):
            run.recap[match[1]] = dict(zip(RECAP_FIELDS, map(int, match.groups()[1:])))
        self.runs.append(run)
        log = self.workdir / f"playbook-{len(self.runs):02d}.log"
        log.write_text(" ".join(argv) + "\n\n" + res.stdout)
        print(f"\nansible-playbook {' '.join(args)} {limit or ''} {extra_vars or ''}: "
              f"rc {res.returncode}, {run.seconds:.1f} s, recap {run.recap} ({log})",
              file=sys.stderr)
        return run

    def playbook_killed_at(self, task: str, *, extra_vars: Mapping[str, Any],
                           limit: str) -> PlaybookRun:
        """ansible-playbook as in playbook(), killed (SIGKILL, its whole process group: what a
        dying controller or a lost connection does to a run) as soon as it starts TASK."""
        argv = [str(self.ansible_playbook), "-i", str(self.inventory), str(PLAYBOOK),
                "-e", json.dumps(dict(extra_vars)), "--limit", limit]
        env = dict(self.env, PYTHONUNBUFFERED="1")
        started = time.monotonic()
        marker = f"TASK [pam_unshare : {task}]"
        lines: List[str] = []
        with subprocess.Popen(argv, cwd=ANSIBLE_DIR, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    lines.append(line)
                    if line.startswith(marker):
                        os.killpg(proc.pid, signal.SIGKILL)
                        break
                    if time.monotonic() - started > PLAYBOOK_TIMEOUT:
                        break
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        run = PlaybookRun(argv, proc.returncode, "".join(lines), time.monotonic() - started)
        self.runs.append(run)
        log = self.workdir / f"playbook-{len(self.runs):02d}.log"
        log.write_text(" ".join(argv) + "\n\n" + run.output)
        print(f"\nansible-playbook {limit} {extra_vars}: killed at {task!r}: "
              f"{run.seconds:.1f} s ({log})", file=sys.stderr)
        assert lines and lines[-1].startswith(marker), f"never reached {task!r}:\n{run.tail()}"
        return run

    def run(self, name: str, cmd: Sequence[str] | str,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """CMD as root inside host NAME (nsenter: not through any PAM stack)."""
        container = self.tiers[name].container
        assert container is not None, f"{name} is not running"
        return container.run(cmd, timeout=timeout)

    def digest(self, name: str, *trees: str) -> Dict[str, str]:
        res = self.run(name, ["python3", "-c", DIGEST_SCRIPT, *(trees or ("/etc/pam.d",))])
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)


def seed_mirror(fleet: Fleet, name: str) -> None:
    """What the role's apt-get install of both .debs needs from the archive (python3-cffi-
    backend), in host NAME's apt cache: the hosts have no network, a real fleet has a mirror."""
    container = fleet.tiers[name].container
    assert container is not None
    debs = []
    for deb in (fleet.deb, fleet.cli_deb):
        debs.append(f"/tmp/{deb.name}")
        container.write_file(debs[-1], deb.read_bytes())
    seed_apt(container, fleet.workdir / "apt", " ".join(debs))
    res = container.run(["rm", "-f", *debs])
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="session")
def fleet(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_root()
    require_tools("systemd-nspawn", "mmdebstrap", "nsenter", "ssh", "ssh-keygen")
    require(shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is not None,
            "needs ansible-core next to this Python (pip install '.[test]')")
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    workdir = tmp_path_factory.mktemp("fleet")
    tiers: List[ContainerTier] = []
    try:
        for name in HOSTS:
            tier = ContainerTier(workdir, None, cache=cache, name=name)
            tier.start()
            tiers.append(tier)
        fleet = Fleet(workdir, deb, tiers)
        fleet.write_inventory()
        for name in fleet.names:
            res = fleet.run(name, ADD_BECOME_USER)
            assert res.returncode == 0, f"{BECOME_USER} on {name}: {res.stderr}"
            seed_mirror(fleet, name)
        for name in fleet.names:
            fleet.pristine[name] = fleet.digest(name)
        yield fleet
        total = sum(run.seconds for run in fleet.runs)
        print(f"\nfleet: {len(fleet.runs)} ansible-playbook runs, {total:.1f} s in all",
              file=sys.stderr)
    finally:
        for tier in reversed(tiers):
            tier.stop()


# On request: the isolation suite across the fleet (about 5 minutes; CI runs the same suite on
# the three test hosts directly, and the role's own runs end with `pam-unshare verify`), check
# mode with other options on one host (about 50 s; the disable test runs check mode too), and the
# on-host timer undoing an interrupted run (about 60 s, most of it waiting for the timer; the
# next run undoing it runs in CI).
FULL_ENV = "PU_FLEET_FULL"
ON_REQUEST = ("test_isolation_suite_across_the_fleet",
              "test_check_diff_shows_other_options_and_changes_nothing",
              "test_interrupted_run_is_undone_by_the_on_host_timer")


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001
    """Deselects (never skips: they do not count) the tests run only with PU_FLEET_FULL=1."""
    if os.environ.get(FULL_ENV) == "1":
        return
    dropped = [item for item in items if getattr(item, "originalname", "") in ON_REQUEST]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
