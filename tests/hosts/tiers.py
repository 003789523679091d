"""The isolation suite's own test hosts, reached over ssh like any other testinfra host.

Each tier boots a Debian machine (12; 13 for pu-container-trixie) with systemd as PID 1, installs
the libpam-unshare .deb in it and runs provision-test-host (the same steps as the Vagrant box),
then answers on an admin sshd (port 2222, UsePAM no) for root with a key made for this run:

- ContainerTier: systemd-nspawn -b in a network namespace of its own (hosts/netns.py), reached at
  the namespace's address;
- VmTier: QEMU with software emulation (hosts/qemu_vm.py), reached through a port forwarded to
  this machine's loopback.

ssh_config_entry() is what testinfra's ssh backend needs to find the host by its tier name
(ssh://pu-container, ssh://pu-container-trixie, ssh://pu-vm).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from .netns import NetworkNamespace
from .systemd_container import DEFAULT_CACHE_DIR, SUITE, SystemdContainer, build_rootfs

PROVISION = Path(__file__).resolve().parent / "provision-test-host"
ADMIN_PORT = 2222
CONTAINER = "pu-container"
CONTAINER_TRIXIE = "pu-container-trixie"
VM = "pu-vm"


class TierError(RuntimeError):
    pass


def packages(deb: Path) -> list[Path]:
    """The module's package DEB and the CLI's, which build-deb writes next to it: a test host
    gets both, as an admin would."""
    cli = deb.with_name(deb.name.replace("libpam-unshare_", "pam-unshare_", 1))
    if not cli.is_file():
        raise TierError(f"{cli} is missing: build-deb makes both packages")
    return [deb, cli]


class Tier(Protocol):
    name: str
    scale: float
    summary: str  # release, kernel and setup times, once started

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def ssh_config_entry(self) -> str: ...


def make_admin_key(workdir: Path) -> Path:
    """A fresh key pair for this run's controller; returns the private key's path."""
    key = workdir / "admin_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pam-unshare-tests",
                        "-f", str(key)], check=True)
    return key


def ssh_config_entry(name: str, address: str, port: int, key: Path) -> str:
    return "\n".join([
        f"Host {name}",
        f"    HostName {address}",
        f"    Port {port}",
        "    User root",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        "    StrictHostKeyChecking no",
        "    UserKnownHostsFile /dev/null",
        "    LogLevel ERROR",
        "    BatchMode yes",
        "    ServerAliveInterval 15",
        "",
    ])


def wait_for_port(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=2) as connection:
                if connection.recv(4).startswith(b"SSH"):
                    return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TierError(f"nothing answers ssh on {address}:{port} after {timeout:.0f} s")
        time.sleep(0.2)


class ContainerTier:
    """Debian SUITE (default 12) booted by systemd-nspawn in its own network namespace, the .deb
    installed (with DEB None: the users, keys and admin sshd only, for a rollout to install the
    module)."""

    scale = 1.0  # native speed: the full loop sizes
    suite = SUITE
    extra_entries: tuple[str, ...] = ()  # entry paths beyond ENTRY_NAMES (helpers/entries.py)

    def __init__(self, workdir: Path, deb: Path | None, cache: Path = DEFAULT_CACHE_DIR,
                 name: str = CONTAINER) -> None:
        self.name = name
        self.workdir = workdir
        self.deb = deb
        self.cache = cache
        self.key = make_admin_key(workdir)
        self.netns: NetworkNamespace | None = None
        self.container: SystemdContainer | None = None
        self.timings: dict[str, float] = {}
        self.kernel = ""
        self.summary = ""

    def start(self) -> None:
        started = time.monotonic()
        rootfs = build_rootfs(self.cache, suite=self.suite)
        self.timings["rootfs"] = time.monotonic() - started
        self.netns = NetworkNamespace()
        try:
            self.netns.create()
            self.container = SystemdContainer(rootfs, network_namespace=self.netns.path,
                                              log_path=self.workdir / f"{self.name}.log")
            self.container.start()
            self.timings["boot"] = self.container.boot_seconds or 0.0
            provisioned = time.monotonic()
            self.container.write_file("/root/provision-test-host", PROVISION.read_bytes(), 0o755)
            self.container.write_file("/root/admin.pub",
                                      self.key.with_suffix(".pub").read_bytes())
            package = ["--no-module"]
            if self.deb is not None:
                package = []
                for deb in packages(self.deb):
                    self.container.write_file(f"/root/{deb.name}", deb.read_bytes())
                    package += ["--deb", f"/root/{deb.name}"]
            result = self.container.run(["/root/provision-test-host", *package,
                                         "/root/admin.pub"], timeout=300)
            if result.returncode != 0:
                raise TierError(f"provisioning {self.name} failed (rc {result.returncode}):\n"
                                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            wait_for_port(self.netns.address, ADMIN_PORT, timeout=60)
            self.timings["provision"] = time.monotonic() - provisioned
        except BaseException:
            self.stop()
            raise
        self.kernel = self.container.run(["uname", "-r"]).stdout.strip()
        self.summary = (f"{self.name} (Debian {self.suite}, kernel {self.kernel}): rootfs "
                        f"{self.timings['rootfs']:.1f} s, boot {self.timings['boot']:.1f} s, "
                        f"provisioning {self.timings['provision']:.1f} s")
        print(f"\n{self.summary}, at {self.netns.address}", file=sys.stderr)

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()
            self.container = None
        if self.netns is not None:
            self.netns.remove()
            self.netns = None

    @property
    def address(self) -> str:
        """Where the admin sshd (ADMIN_PORT) answers."""
        if self.netns is None:
            raise TierError(f"{self.name} is not running")
        return self.netns.address

    def ssh_config_entry(self) -> str:
        if self.netns is None:
            raise TierError(f"{self.name} is not running")
        return ssh_config_entry(self.name, self.netns.address, ADMIN_PORT, self.key)


class TrixieContainerTier(ContainerTier):
    """The same tier on Debian 13: sudo-rs, run0 (systemd 257), OpenSSH 10's sshd-session."""

    suite = "trixie"
    extra_entries = ("sudo-rs-nopty", "sudo-rs-pty", "run0")

    def __init__(self, workdir: Path, deb: Path | None, cache: Path = DEFAULT_CACHE_DIR,
                 name: str = CONTAINER_TRIXIE) -> None:
        super().__init__(workdir, deb, cache, name)


class VmTier:
    """Debian 12 under QEMU (-accel tcg), ssh forwarded to loopback, the .deb installed."""

    name = VM
    # Emulated CPUs run logins about ten times slower: loops of hundreds of logins shrink to a
    # tenth (tests/isolation/targets.rounds), every check stays.
    scale = 0.1
    # and the logout, reaping and exemption tests run for one entry path of each kind (no pty,
    # pty, sshd, a PAM library caller) unless PU_ISOLATION_FULL=1 (tests/isolation/conftest.py):
    # CI's budget pays for the Debian 13 tier this way. Every entry path x probe stays.
    behaviour_entries = ("su", "sudo-pty", "ssh-command", "python-pam")

    def __init__(self, workdir: Path, deb: Path, cache: Path = DEFAULT_CACHE_DIR) -> None:
        self.workdir = workdir
        self.deb = deb
        self.cache = cache
        self.key = make_admin_key(workdir)
        self.vm = None
        self.timings: dict[str, float] = {}
        self.kernel = ""
        self.summary = ""

    def start(self) -> None:
        from .qemu_vm import QemuVm, build_image  # imported late: only this tier needs QEMU

        started = time.monotonic()
        image = build_image(self.cache)
        self.timings["image"] = time.monotonic() - started
        self.vm = QemuVm(image, self.key.with_suffix(".pub"),
                         console_log=self.workdir / f"{self.name}.console.log")
        try:
            self.vm.start()
            self.timings["boot"] = self.vm.boot_seconds or 0.0
            provisioned = time.monotonic()
            for deb in packages(self.deb):
                self.vm.copy_in(deb, f"/root/{deb.name}")
            self.vm.copy_in(PROVISION, "/root/provision-test-host")
            self.vm.copy_in(self.key.with_suffix(".pub"), "/root/admin.pub")
            debs = " ".join(f"--deb /root/{deb.name}" for deb in packages(self.deb))
            result = self.vm.run("chmod 755 /root/provision-test-host && /root/provision-test-host"
                                 f" {debs} /root/admin.pub", timeout=600)
            if result.returncode != 0:
                raise TierError(f"provisioning {self.name} failed (rc {result.returncode}):\n"
                                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            # QEMU itself accepts on the forwarded port from the start: wait for the guest's sshd.
            self.vm.wait_for_ssh(ADMIN_PORT, timeout=120)
            self.timings["provision"] = time.monotonic() - provisioned
        except BaseException:
            self.stop()
            raise
        self.kernel = self.vm.run("uname -r").stdout.strip()
        self.summary = (f"{self.name} (Debian {SUITE}, kernel {self.kernel}): image "
                        f"{self.timings['image']:.1f} s, boot {self.timings['boot']:.1f} s, "
                        f"provisioning {self.timings['provision']:.1f} s")
        print(f"\n{self.summary}, admin ssh on 127.0.0.1:{self.vm.admin_port}", file=sys.stderr)

    def stop(self) -> None:
        if self.vm is not None:
            with contextlib.suppress(Exception):
                self.vm.stop()
            self.vm = None

    def ssh_config_entry(self) -> str:
        if self.vm is None:
            raise TierError(f"{self.name} is not running")
        return ssh_config_entry(self.name, "127.0.0.1", self.vm.admin_port, self.key)


TIERS = {CONTAINER: ContainerTier, CONTAINER_TRIXIE: TrixieContainerTier, VM: VmTier}
