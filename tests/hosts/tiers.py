"""The isolation suite's own test hosts, reached over ssh like any other testinfra host.

Each tier boots a Debian machine (12; 13 for pu-container-trixie) with systemd as PID 1, installs
the libpam-unshare .deb in it and runs provision-test-host (the same steps as the Vagrant box),
then answers on an admin sshd (port 2222, UsePAM no) for root with a key made for this run:

- ContainerTier: systemd-nspawn -b in a network namespace of its own (hosts/netns.py), reached at
  the namespace's address;
- VmTier: QEMU with software emulation (hosts/qemu_vm.py), reached through a port forwarded to
  this machine's loopback;
- VagrantTier: the same image as a Vagrant box (hosts/vagrant_box.py) that the project's
  Vagrantfile brings up and provisions with vagrant-libvirt, libvirtd in a network namespace of
  its own, reached through that namespace.

HostTier is the life cycle they share: image, boot, provision, wait for the admin sshd, stop.

ssh_config_entry() is what testinfra's ssh backend needs to find the host by its tier name
(ssh://pu-container, ssh://pu-container-trixie, ssh://pu-vm, ssh://pu-vagrant).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from .netns import NetworkNamespace
from .systemd_container import DEFAULT_CACHE_DIR, SUITE, SystemdContainer, build_rootfs

if TYPE_CHECKING:
    from .vagrant_box import LibvirtNamespace

PROVISION = Path(__file__).resolve().parent / "provision-test-host"
ADMIN_PORT = 2222
CONTAINER = "pu-container"
CONTAINER_TRIXIE = "pu-container-trixie"
VM = "pu-vm"
VAGRANT = "pu-vagrant"
ROOT = Path(__file__).resolve().parents[2]
# The README's Vagrant commands (test_vagrant.py checks that the README has them as written).
VAGRANT_UP = ["vagrant", "up", "--provider=libvirt"]
VAGRANT_SSH_CONFIG = ("vagrant ssh-config --host pu-vagrant"
                      " | sed -e 's/^\\( *\\)User .*/\\1User root/'"
                      " -e 's/^\\( *\\)Port .*/\\1Port 2222/'")
VAGRANT_DESTROY = ["vagrant", "destroy", "-f"]


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


class HostTier:
    """One life cycle for every tier: the cached image (prepare), boot, the packages and
    provision-test-host copied in and run, the admin sshd waited for; stop undoes it all, and
    start stops what it made if any step fails. Each tier says how to boot, copy, run and halt."""

    name: str
    scale = 1.0  # native speed: the full loop sizes
    suite = SUITE
    image_phase = "image"  # what the first timing in the summary is called
    provision_timeout = 300.0
    extra_entries: tuple[str, ...] = ()  # entry paths beyond ENTRY_NAMES (helpers/entries.py)

    def __init__(self, workdir: Path, deb: Path | None, cache: Path = DEFAULT_CACHE_DIR) -> None:
        self.workdir = workdir
        self.deb = deb
        self.cache = cache
        self.key = make_admin_key(workdir)
        self.timings: dict[str, float] = {}
        self.kernel = ""
        self.summary = ""
        # When provisioning began, if boot() did some of it (Vagrant's up provisions).
        self.provisioning_since: float | None = None

    # -- what each tier supplies ------------------------------------------ #

    def prepare(self) -> None:
        """Build (or find in the cache) what boot() needs."""
        raise NotImplementedError

    def boot(self) -> float:
        """Boot the host; return the seconds the boot took."""
        raise NotImplementedError

    def copy_in(self, source: Path, path: str, mode: int) -> None:
        raise NotImplementedError

    def run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """ARGV as root on the host."""
        raise NotImplementedError

    def wait_admin(self) -> None:
        """Wait until the admin sshd that provision-test-host started answers."""
        raise NotImplementedError

    def halt(self) -> None:
        """Stop what boot() started, whatever state it is in."""
        raise NotImplementedError

    def where(self) -> str:
        """Where the suite reaches the host, for the summary line."""
        raise NotImplementedError

    # -- the life cycle --------------------------------------------------- #

    def provision(self) -> None:
        self.copy_in(PROVISION, "/root/provision-test-host", 0o755)
        self.copy_in(self.key.with_suffix(".pub"), "/root/admin.pub", 0o644)
        package = ["--no-module"]
        if self.deb is not None:
            package = []
            for deb in packages(self.deb):
                self.copy_in(deb, f"/root/{deb.name}", 0o644)
                package += ["--deb", f"/root/{deb.name}"]
        result = self.run(["/root/provision-test-host", *package, "/root/admin.pub"],
                          timeout=self.provision_timeout)
        if result.returncode != 0:
            raise TierError(f"provisioning {self.name} failed (rc {result.returncode}):\n"
                            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def start(self) -> None:
        started = time.monotonic()
        self.prepare()
        self.timings[self.image_phase] = time.monotonic() - started
        try:
            self.timings["boot"] = self.boot()
            provisioned = self.provisioning_since or time.monotonic()
            self.provision()
            self.wait_admin()
            self.timings["provisioning"] = time.monotonic() - provisioned
        except BaseException as error:
            try:
                self.stop()
            except TierError as cleanup:  # say both, the cause first
                if not isinstance(error, Exception):
                    raise error from cleanup
                raise TierError(f"{error}; then stopping {self.name}: {cleanup}") from error
            raise
        self.kernel = self.run(["uname", "-r"]).stdout.strip()
        phases = ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.timings.items())
        self.summary = f"{self.name} (Debian {self.suite}, kernel {self.kernel}): {phases}"
        print(f"\n{self.summary}, {self.where()}", file=sys.stderr)

    def stop(self) -> None:
        self.halt()


class ContainerTier(HostTier):
    """Debian SUITE (default 12) booted by systemd-nspawn in its own network namespace, the .deb
    installed (with DEB None: the users, keys and admin sshd only, for a rollout to install the
    module)."""

    image_phase = "rootfs"

    def __init__(self, workdir: Path, deb: Path | None, cache: Path = DEFAULT_CACHE_DIR,
                 name: str = CONTAINER) -> None:
        super().__init__(workdir, deb, cache)
        self.name = name
        self.rootfs: Path | None = None
        self.netns: NetworkNamespace | None = None
        self.container: SystemdContainer | None = None

    def prepare(self) -> None:
        self.rootfs = build_rootfs(self.cache, suite=self.suite)

    def boot(self) -> float:
        assert self.rootfs is not None
        self.netns = NetworkNamespace()
        self.netns.create()
        self.container = SystemdContainer(self.rootfs, network_namespace=self.netns.path,
                                          log_path=self.workdir / f"{self.name}.log")
        self.container.start()
        return self.container.boot_seconds or 0.0

    def copy_in(self, source: Path, path: str, mode: int) -> None:
        assert self.container is not None
        self.container.write_file(path, source.read_bytes(), mode)

    def run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert self.container is not None
        return self.container.run(argv, timeout=timeout)

    def wait_admin(self) -> None:
        wait_for_port(self.address, ADMIN_PORT, timeout=60)

    def where(self) -> str:
        return f"at {self.address}"

    def halt(self) -> None:
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


class EmulatedTier(HostTier):
    """What the VM tiers share: Debian 12 under QEMU's software emulation."""

    # Emulated CPUs run logins about ten times slower: loops of hundreds of logins shrink to a
    # tenth (tests/isolation/targets.rounds), every check stays.
    scale = 0.1
    # and the logout, reaping and exemption tests run for su and sshd only, unless
    # PU_ISOLATION_FULL=1 (tests/isolation/conftest.py): each costs 15-30 s here, and the
    # containers run them for every entry path natively. CI's 45 minutes pay for the Debian 13
    # tier and the Vagrant path this way. Every entry path x probe stays.
    behaviour_entries = ("su", "ssh-command")
    provision_timeout = 600.0


class VmTier(EmulatedTier):
    """Debian 12 under QEMU (-accel tcg), ssh forwarded to loopback, the .deb installed."""

    name = VM

    def __init__(self, workdir: Path, deb: Path, cache: Path = DEFAULT_CACHE_DIR) -> None:
        super().__init__(workdir, deb, cache)
        self.image = None
        self.vm = None

    def prepare(self) -> None:
        from .qemu_vm import build_image  # imported late: only this tier needs QEMU

        self.image = build_image(self.cache)

    def boot(self) -> float:
        from .qemu_vm import QemuVm

        self.vm = QemuVm(self.image, self.key.with_suffix(".pub"),
                         console_log=self.workdir / f"{self.name}.console.log")
        self.vm.start()
        return self.vm.boot_seconds or 0.0

    def copy_in(self, source: Path, path: str, mode: int) -> None:
        self.vm.copy_in(source, path, mode)

    def run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.vm.run(argv, timeout=timeout)

    def wait_admin(self) -> None:
        # QEMU itself accepts on the forwarded port from the start: wait for the guest's sshd.
        self.vm.wait_for_ssh(ADMIN_PORT, timeout=120)

    def where(self) -> str:
        return f"admin ssh on 127.0.0.1:{self.vm.admin_port}"

    def halt(self) -> None:
        if self.vm is not None:
            with contextlib.suppress(Exception):
                self.vm.stop()
            self.vm = None

    def ssh_config_entry(self) -> str:
        if self.vm is None:
            raise TierError(f"{self.name} is not running")
        return ssh_config_entry(self.name, "127.0.0.1", self.vm.admin_port, self.key)


class VagrantTier(EmulatedTier):
    """The same Debian 12 image as a Vagrant box (hosts/vagrant_box.py), brought up by the
    project's Vagrantfile with vagrant-libvirt, libvirtd in a network namespace of its own; the
    README's commands, run as written: `vagrant up` (which provisions), `vagrant ssh-config`
    piped through sed for the admin sshd, and `vagrant destroy -f` at the end, after which no
    domain, volume, network or process may be left."""

    name = VAGRANT
    image_phase = "box"
    box_env = "PU_VAGRANT_BOX"

    def __init__(self, workdir: Path, deb: Path, cache: Path = DEFAULT_CACHE_DIR) -> None:
        super().__init__(workdir, deb, cache)
        self.box = os.environ.get(self.box_env) or ""
        self.dotfile = workdir / ".vagrant"
        self.log = workdir / f"{self.name}.log"
        self.libvirt: LibvirtNamespace | None = None
        self.config = self.dotfile / "pu-ssh-config"
        self.up = False
        self.marks: dict[str, float] = {}

    def env(self) -> dict[str, str]:
        assert self.deb is not None
        return {**os.environ, self.box_env: self.box, "PU_DEB": str(self.deb),
                "VAGRANT_NO_COLOR": "1",
                "VAGRANT_CWD": str(ROOT), "VAGRANT_DOTFILE_PATH": str(self.dotfile)}

    def vagrant(self, command: list[str] | str, timeout: float) -> tuple[int, list[str]]:
        """A README command (argv, or a shell pipeline) inside the namespace, its output
        timestamped into the log. Returns the exit code and, if it failed, why, in one line."""
        assert self.libvirt is not None
        argv = ["sh", "-c", command] if isinstance(command, str) else command
        errors = self.workdir / "vagrant.stderr"
        lines: list[str] = []
        # A terminal for its output: Ruby buffers a pipe, which would hide when each step began.
        reader, writer = pty.openpty()
        with open(self.log, "a") as log, open(errors, "w+") as stderr, \
                open(reader, "rb", buffering=0) as output:
            log.write(f"+ {command if isinstance(command, str) else shlex.join(command)}\n")
            try:
                proc = subprocess.Popen(self.libvirt.netns_argv(argv), cwd=ROOT, env=self.env(),
                                        stdin=subprocess.DEVNULL, stdout=writer, stderr=stderr,
                                        start_new_session=True)
            finally:
                os.close(writer)
            deadline = time.monotonic() + timeout
            try:
                for raw in iter_lines(output):
                    # Vagrant redraws its upload progress with ESC[K on one line: keep the last.
                    line = raw.split("\x1b[K")[-1]
                    lines.append(line)
                    log.write(f"{time.monotonic():.1f} {line}\n")
                    if "Running provisioner:" in line and "provisioning" not in self.marks:
                        self.marks["provisioning"] = time.monotonic()
                    if time.monotonic() > deadline:
                        raise TierError(f"{shlex.join(argv)[:60]} took more than {timeout:.0f} s")
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            stderr.seek(0)
            error = stderr.read()
            log.write(f"stderr (rc {rc}):\n{error}")
        return rc, ([] if rc == 0 else [vagrant_failure(lines, error.splitlines())])

    def prepare(self) -> None:
        from .vagrant_box import BOX_NAME, add_box, box_added, build_box

        if self.box and self.box != BOX_NAME:
            if not box_added(self.box):
                raise TierError(f"{self.box_env}={self.box}: no such box in `vagrant box list`; "
                                f"add it (vagrant box add), or unset {self.box_env} for the box "
                                "built from the test VM's image")
            return
        self.box = BOX_NAME
        add_box(build_box(self.cache))

    def boot(self) -> float:
        from .vagrant_box import LibvirtNamespace, VagrantError

        started = time.monotonic()
        self.libvirt = LibvirtNamespace(self.workdir)
        try:
            self.libvirt.start()
        except VagrantError as error:
            self.libvirt = None
            raise TierError(str(error)) from None
        self.up = True  # from here on, stop() runs vagrant destroy
        rc, why = self.vagrant(VAGRANT_UP, timeout=1200)
        if rc != 0:
            raise TierError(f"vagrant up failed (rc {rc}): {why[0]} (log {self.log})")
        # Up to the first provisioner: the rest of `vagrant up` is provisioning.
        self.provisioning_since = self.marks.setdefault("provisioning", time.monotonic())
        return self.provisioning_since - started

    def provision(self) -> None:
        """Done by `vagrant up` (the Vagrantfile's provisioners); what is left is the README's
        ssh config for the admin sshd, reached through the namespace."""
        rc, why = self.vagrant(f"{VAGRANT_SSH_CONFIG} > {shlex.quote(str(self.config))}",
                               timeout=120)
        if rc != 0:
            raise TierError(f"vagrant ssh-config failed (rc {rc}): {why[0]}")
        assert self.libvirt is not None
        with open(self.config, "a") as config:
            config.write(f"  ProxyCommand ip netns exec {self.libvirt.name} nc %h %p\n")

    def ssh_argv(self, argv: list[str]) -> list[str]:
        return ["ssh", "-F", str(self.config), "-o", "BatchMode=yes", self.name, "--",
                shlex.join(argv)]

    def copy_in(self, source: Path, path: str, mode: int) -> None:
        raise TierError("the Vagrantfile's provisioners copy the files in")

    def run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ssh_argv(argv), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def wait_admin(self) -> None:
        deadline = time.monotonic() + 120
        while (result := self.run(["true"], timeout=60)).returncode != 0:
            if time.monotonic() > deadline:
                raise TierError(f"no ssh to {self.name}'s admin sshd: {result.stderr.strip()}")
            time.sleep(1)

    def where(self) -> str:
        assert self.libvirt is not None
        return f"in network namespace {self.libvirt.name}"

    def halt(self) -> None:
        libvirt = self.libvirt
        if libvirt is None:
            return
        problems: list[str] = []
        try:
            # Nothing to destroy if `vagrant up` failed before it made the machine (e.g. no
            # provider): vagrant destroy would only fail for the same reason.
            made = (self.dotfile / "machines" / "default" / "libvirt" / "id").exists()
            if self.up and (made or libvirt.leftovers().domains):
                started = time.monotonic()
                rc, why = self.vagrant(VAGRANT_DESTROY, timeout=300)
                self.timings["destroy"] = time.monotonic() - started
                if rc != 0:
                    problems.append(f"vagrant destroy -f failed (rc {rc}): {why[0]}")
            self.up = False
            # vagrant destroy keeps the box's volume in the pool, for the next `vagrant up`.
            libvirt.clean_libvirt()
            left = libvirt.leftovers()
            if left:
                problems.append(f"left behind after vagrant destroy: {left}")
        finally:
            libvirt.stop()
            self.libvirt = None
        if Path(f"/run/netns/{libvirt.name}").exists():
            problems.append(f"network namespace {libvirt.name} is still there")
        if "destroy" in self.timings:
            print(f"\n{self.name}: vagrant destroy -f {self.timings['destroy']:.1f} s",
                  file=sys.stderr)
        if problems:
            raise TierError("; ".join(problems))

    def ssh_config_entry(self) -> str:
        return self.config.read_text()


def iter_lines(output: IO[bytes]) -> Iterator[str]:
    """The lines written to a pty until its last writer closes it (EIO)."""
    pending = b""
    while True:
        try:
            chunk = output.read(65536)
        except OSError:  # EIO: the other side is closed
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace").rstrip("\r")


def vagrant_failure(stdout: list[str], stderr: list[str]) -> str:
    """One line for why a vagrant command failed: when a provisioner failed, the guest's first
    error (Vagrant relays the guest's output with a "default:" prefix), else Vagrant's own
    message (the first paragraph of its stderr)."""
    provisioning = False
    guest: list[str] = []
    for line in stdout + stderr:
        provisioning = provisioning or "Running provisioner:" in line
        if provisioning and line.startswith("    default:") and line.split(":", 1)[1].strip():
            guest.append(line.split(":", 1)[1].strip())
    if guest:
        errors = [line for line in guest if re.search(r"\berror\b", line, re.IGNORECASE)]
        return f"provisioning failed: {(errors or guest[-1:])[0]}"
    paragraphs = [" ".join(part.split()) for part in "\n".join(stderr).split("\n\n")]
    paragraphs = [part for part in paragraphs if part]
    if paragraphs:
        return paragraphs[0]
    return stdout[-1].strip() if stdout else "no output"


TIERS = {CONTAINER: ContainerTier, CONTAINER_TRIXIE: TrixieContainerTier, VM: VmTier,
         VAGRANT: VagrantTier}
