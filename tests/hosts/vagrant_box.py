"""Vagrant on this kind of machine: a libvirt box of our own, and libvirtd in a network namespace.

The box (``build_box``) is the VM tier's cached image (qemu_vm.build_image) as a vagrant-libvirt
box: the raw disk as a qcow2 ``box.img``, ``metadata.json`` and the box's own Vagrantfile, which
boots the image's kernel and initrd directly (no boot loader in the image) with QEMU's software
emulation (no KVM here) and lets Vagrant log in as root with a key made for the box: its public
half travels on the kernel command line, as for the VM tier. It is cached next to the image and
added with ``vagrant box add`` under BOX_NAME.

``LibvirtNamespace`` starts virtlogd and libvirtd inside a network namespace of its own
(pyroute2), so that the networks vagrant-libvirt makes (192.168.121.0/24, dnsmasq) exist only
there; ``vagrant`` runs inside it too. From outside, ssh reaches the box through
``ProxyCommand ip netns exec NS nc %h %p``. ``stop`` removes what libvirt kept (the box's volume
in the pool, networks and pools it defined), ends every process in the namespace and deletes it.

Plain Python on purpose (no pytest import).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pyroute2 import NetNS, netns

from .cache import DEFAULT_CACHE_DIR, publish, remove_tree, run_logged, tail
from .qemu_vm import VmImage, build_image

BOX_NAME = "pam-unshare-bookworm"
# Bump when the box's files (its Vagrantfile above all) change: the image's key covers the rest.
_BOX_RECIPE = "2"
_BOX_FILE = "pam-unshare.box"
_KEY = "box_ed25519"
_STAMP = "pam-unshare-box-key"
_VAGRANT_HOME = Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")
LIBVIRT_URI = "qemu:///system"
# Where box commands run: Vagrant makes .vagrant/ next to the Vagrantfile it finds from its
# working directory up, and the source tree has one.
_NO_PROJECT = "/"
# libvirtd with /dev/kvm hidden (/dev/null in its place, in a mount namespace of its own): KVM is
# not usable for nested guests here, yet with /dev/kvm present libvirt probes QEMU's capabilities
# with it, which hung domain creation for 80 to 113 s on this machine (1 s without). We use TCG
# (the box's driver is "qemu") anyway.
_WITHOUT_KVM = ["unshare", "--mount", "--propagation=private", "--", "sh", "-c",
                "if [ -e /dev/kvm ]; then mount --bind /dev/null /dev/kvm; fi; exec \"$0\""]

# The box's Vagrantfile: what vagrant-libvirt needs to boot our image (merged under the
# project's Vagrantfile, which may override it). Kernel and initrd stay in the cache, where
# libvirt's QEMU user can read them (a box lives below root's 0700 home).
_BOX_VAGRANTFILE = """\
# pam-unshare's test image as a libvirt box (tests/hosts/vagrant_box.py).
Vagrant.configure("2") do |config|
  config.ssh.username = "root"
  config.ssh.private_key_path = File.join(__dir__, "{key}")
  config.ssh.insert_key = false
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |lv|
    lv.driver = "qemu"
    lv.cpu_mode = "custom"
    lv.cpu_model = "qemu64"
    lv.graphics_type = "none"  # no VNC server: nothing to listen on
    lv.video_type = "none"
    lv.kernel = "{kernel}"
    lv.initrd = "{initrd}"
    lv.cmd_line = "root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet panic=-1 {cmdline_key}"
  end
end
"""


class VagrantError(RuntimeError):
    """The box could not be built or added, or libvirt could not be started or cleaned up."""


@dataclass(frozen=True)
class Box:
    path: Path  # the cache directory holding the box file and its key
    file: Path
    key: Path
    stamp: str  # which image and recipe it was built from


def box_stamp(image: VmImage) -> str:
    return f"{image.key}-{_BOX_RECIPE}"


def build_box(cache_dir: Path = DEFAULT_CACHE_DIR) -> Box:
    """The cached box for the VM tier's cached image, building both if needed."""
    image = build_image(cache_dir)
    stamp = box_stamp(image)
    name = f"vagrant-{stamp}"
    log = Path(cache_dir) / f"{name}.log"

    def build(tmp: Path, lock: IO[str]) -> None:
        key = tmp / _KEY
        with open(log, "wb") as out:
            run_logged(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", BOX_NAME,
                        "-f", str(key)], out, lock, VagrantError)
            run_logged(["qemu-img", "convert", "-O", "qcow2", str(image.disk),
                        str(tmp / "box.img")], out, lock, VagrantError)
        public = base64.b64encode(key.with_suffix(".pub").read_bytes()).decode()
        (tmp / "metadata.json").write_text(json.dumps(
            {"provider": "libvirt", "format": "qcow2", "virtual_size": 2}) + "\n")
        (tmp / "Vagrantfile").write_text(_BOX_VAGRANTFILE.format(
            key=_KEY, kernel=image.kernel, initrd=image.initrd,
            cmdline_key=f"pam_unshare.authorized_key={public}"))
        (tmp / _STAMP).write_text(stamp + "\n")
        with tarfile.open(tmp / _BOX_FILE, "w") as box:
            for member in ("metadata.json", "Vagrantfile", "box.img", _KEY, _STAMP):
                box.add(tmp / member, arcname=member)
        (tmp / "box.img").unlink()  # in the box file now: no second copy of the disk

    path = publish(Path(cache_dir), name, ".vagrant.lock",
                   lambda final: (final / _BOX_FILE).exists(), build)
    # Boxes of older images or recipes: 700 MiB each, and `vagrant box add` has its own copy.
    for old in Path(cache_dir).glob("vagrant-*"):
        if old.is_dir() and old != path:
            remove_tree(old)
            old.with_name(old.name + ".log").unlink(missing_ok=True)
    return Box(path, path / _BOX_FILE, path / _KEY, stamp)


def added_stamp(name: str = BOX_NAME) -> str | None:
    """The stamp of the box added as NAME, None if there is none (or not one of ours)."""
    with contextlib.suppress(OSError):
        for stamp in (_VAGRANT_HOME / "boxes" / name).glob(f"*/libvirt/{_STAMP}"):
            return stamp.read_text().strip()
    return None


def box_added(name: str) -> bool:
    """Whether `vagrant box list` has NAME for libvirt."""
    result = subprocess.run(["vagrant", "box", "list", "--machine-readable"],
                            capture_output=True, text=True, cwd=_NO_PROJECT)
    names = {line.split(",")[3] for line in result.stdout.splitlines()
             if line.split(",")[2:3] == ["box-name"]}
    return name in names


def add_box(box: Box, name: str = BOX_NAME) -> bool:
    """`vagrant box add` BOX as NAME unless that very box is there already; True if added."""
    if added_stamp(name) == box.stamp:
        return False
    result = subprocess.run(["vagrant", "box", "add", "--force", "--name", name, str(box.file)],
                            capture_output=True, text=True, cwd=_NO_PROJECT)
    if result.returncode != 0:
        raise VagrantError(f"vagrant box add {box.file} failed: "
                           f"{last_line(result.stdout + result.stderr)}")
    return True


def last_line(output: str) -> str:
    """The last non-empty line of a command's output: where Vagrant puts the reason."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


@dataclass
class Leftovers:
    """What libvirt or the namespace still holds: all empty after a clean stop."""

    domains: list[str]
    volumes: list[str]
    networks: list[str]
    processes: list[str]

    def __bool__(self) -> bool:
        return bool(self.domains or self.volumes or self.networks or self.processes)


class LibvirtNamespace:
    """virtlogd and libvirtd in a network namespace this object makes and removes."""

    libvirtd = "libvirtd"
    virtlogd = "virtlogd"

    def __init__(self, workdir: Path, start_timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.name = f"pu-vagrant-{os.getpid()}-{secrets.token_hex(2)}"
        self.start_timeout = start_timeout
        self.created = False
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.volumes_before: set[str] = set()
        self.networks_before: set[str] = set()
        self.pools_before: set[str] = set()

    def __enter__(self) -> LibvirtNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def netns_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def start(self) -> None:
        if Path("/run/libvirt/libvirt-sock").exists() and self.virsh(["version"]).returncode == 0:
            raise VagrantError("a libvirtd is running already on this machine: stop it first "
                               "(this one would have to share it)")
        netns.create(self.name)
        self.created = True
        try:
            with NetNS(self.name) as inside:
                inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
            for daemon in (self.virtlogd, self.libvirtd):
                log = open(self.workdir / f"{Path(daemon).name}.log", "wb")  # noqa: SIM115
                with log:
                    try:
                        argv = [daemon] if daemon == self.virtlogd else [*_WITHOUT_KVM, daemon]
                        self.daemons.append(subprocess.Popen(
                            self.netns_argv(argv), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True))
                    except OSError as error:
                        raise VagrantError(f"{daemon} did not start: {error}") from None
            self._wait_ready()
            self.pools_before = set(self._names(["pool-list", "--all", "--name"]))
            self.networks_before = set(self._names(["net-list", "--all", "--name"]))
            self.volumes_before = set(self.volumes())
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    name = Path(str(daemon.args[-1])).name
                    raise VagrantError(
                        f"{name} did not start (rc {daemon.returncode}): "
                        f"{last_line(tail(self.workdir / f'{name}.log'))}")
            if self.virsh(["version"]).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise VagrantError(f"libvirtd does not answer on {LIBVIRT_URI} after "
                                   f"{self.start_timeout:.0f} s")
            time.sleep(0.2)

    def virsh(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, *argv], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    def _names(self, argv: list[str]) -> list[str]:
        result = self.virsh(argv)
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def volumes(self) -> list[str]:
        found = []
        for pool in self._names(["pool-list", "--name"]):
            found += [f"{pool}/{volume.split()[0]}"
                      for volume in self._names(["vol-list", pool])]
        return found

    def leftovers(self) -> Leftovers:
        """What this namespace's libvirt holds beyond what it had when it started."""
        processes: list[str] = []
        if self.created:
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True).stdout.split()
            ours = {str(daemon.pid) for daemon in self.daemons}
            for pid in pids:
                if pid not in ours:
                    with contextlib.suppress(OSError):
                        processes.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
        if not self.daemons:
            return Leftovers([], [], [], processes)
        return Leftovers(
            domains=self._names(["list", "--all", "--name"]),
            volumes=sorted(set(self.volumes()) - self.volumes_before),
            networks=sorted(set(self._names(["net-list", "--all", "--name"]))
                            - self.networks_before),
            processes=processes,
        )

    def clean_libvirt(self) -> None:
        """Delete what vagrant-libvirt keeps after `vagrant destroy`: the box's volume, the
        networks and the pool it defined (definitions outlive libvirtd, in /etc/libvirt)."""
        for domain in self._names(["list", "--all", "--name"]):
            self.virsh(["destroy", domain])
            self.virsh(["undefine", "--nvram", "--remove-all-storage", domain])
        for volume in set(self.volumes()) - self.volumes_before:
            pool, name = volume.split("/", 1)
            self.virsh(["vol-delete", "--pool", pool, name])
        for network in set(self._names(["net-list", "--all", "--name"])) - self.networks_before:
            self.virsh(["net-destroy", network])
            self.virsh(["net-undefine", network])
        for pool in set(self._names(["pool-list", "--all", "--name"])) - self.pools_before:
            self.virsh(["pool-destroy", pool])
            self.virsh(["pool-undefine", pool])

    def stop(self) -> None:
        """Stop libvirtd and virtlogd, end whatever else runs in the namespace (dnsmasq, a
        QEMU that outlived its domain), delete the namespace."""
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(daemon.pid, signal.SIGKILL)
                    daemon.wait()
        self.daemons = []
        if not self.created:
            return
        for _ in range(50):
            pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                                  text=True).stdout.split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(self.name)
        self.created = False
