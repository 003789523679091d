"""A Debian 12 test host in a real virtual machine: QEMU with software emulation (TCG, no KVM).

Why this host exists: the systemd-nspawn container (systemd_container.py) shares the CI
machine's kernel; this VM runs Debian's own kernel with systemd as PID 1, its own /proc,
sysctls and logind, reached over ssh like any remote test host.

Plain Python on purpose (no pytest import). Works as ``from hosts.qemu_vm import ...`` with
tests/ on sys.path, and as a script for manual checks and timings::

    python3 tests/hosts/qemu_vm.py [--keep-seconds N] [--cache-dir DIR]

Image recipe (``build_image``), cached in /var/cache/pam-unshare-tests as
``vm-bookworm-<key>/`` where the key covers the mirrors, the package list and the recipe
(the hook scripts below are part of it, so editing them rebuilds the image):

- mmdebstrap, variant minbase, the host's Debian mirrors (``host_debian_mirrors()``);
- an essential hook, before the kernel is installed, sets initramfs-tools to MODULES=list
  with virtio_pci, virtio_blk, crc32c_generic and ext4: a small initrd (a few MiB instead
  of ~36 MiB for MODULES=most) that is built once and unpacks fast under emulation;
- a customize hook: hostname pam-unshare-vm, /etc/hosts, fstab with /dev/vda as /,
  no password for root (``*``: nothing matches it, yet ssh keys work even for an sshd with
  UsePAM no, which refuses a ``!``-locked account), an empty machine-id (each boot is a
  fresh machine), systemd-networkd with DHCP on the virtio NIC, units that only cost boot
  time masked (apt/fstrim/e2scrub timers, systemd-firstboot, which would prompt on the
  console at a first boot), and the one-shot unit that installs root's authorized_keys (see below);
  sshd's host keys come from openssh-server's postinst (same keys in every VM: fine for
  throwaway test hosts reached on loopback only);
- ``mkfs.ext4 -d TREE -L root disk.raw 2G``: a sparse raw ext4 image made from the tree
  with no loop mount; vmlinuz and initrd.img are copied next to it;
- everything is built in ``.tmp-vm-*`` and renamed into place, under a lock file; the disk is
  made read-only, and the images of other keys are deleted once a new one is in place.

The VM (``QemuVm``) boots the kernel directly (``-kernel/-initrd``) from a qcow2 overlay
backed by the raw image, made in a temporary directory and deleted on stop: the cached image
stays pristine. Root's authorized_keys travels on the kernel command line
(``pam_unshare.authorized_key=<base64>``, a dotted name so that the kernel keeps it out of
PID 1's environment); ``pam-unshare-vm-keys.service`` in the image writes it to
/root/.ssh/authorized_keys before sshd starts. QEMU's user-mode network is ``restrict=on``
(the guest reaches nothing, neither the host nor beyond) with two forwards only, from
127.0.0.1:<free port> to the guest's ports 22 and 2222. QEMU opens no other socket: no
monitor, no display.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

if __package__:
    from .cache import DEFAULT_CACHE_DIR, mmdebstrap, publish, remove_tree, run_logged, tail
    from .systemd_container import BASE_PACKAGES, SUITE, host_debian_mirrors
else:  # run as a script: python3 tests/hosts/qemu_vm.py
    from cache import (  # type: ignore[no-redef]
        DEFAULT_CACHE_DIR,
        mmdebstrap,
        publish,
        remove_tree,
        run_logged,
        tail,
    )
    from systemd_container import (  # type: ignore[no-redef]
        BASE_PACKAGES,
        SUITE,
        host_debian_mirrors,
    )

VARIANT = "minbase"
PACKAGES: tuple[str, ...] = (
    *BASE_PACKAGES,
    "linux-image-amd64",
    # libpam-unshare's .deb depends on it, and the VM has no network to fetch it later.
    "usr-is-merged",
)
IMAGE_SIZE = "2G"
HOSTNAME = "pam-unshare-vm"
# The guest ports that are forwarded from 127.0.0.1: sshd, and the isolation suite's admin
# sshd (provision-test-host sets that one up).
GUEST_SSH_PORT = 22
GUEST_ADMIN_PORT = 2222
# Bump when the way the image is made changes outside the hook scripts (which are hashed).
_RECIPE_VERSION = "2"
_KEY_PARAM = "pam_unshare.authorized_key"
# x86 COMMAND_LINE_SIZE is 2048; leave room for the rest of the command line.
_MAX_KEY_PARAM = 1500
_PR_SET_PDEATHSIG = 1
_MANIFEST = "manifest.json"
_RUN_DIR_PARENT = "pam-unshare-qemu"

# Runs after the essential packages, before linux-image-amd64 and initramfs-tools: the
# kernel's postinst then builds the small initrd right away (no second update-initramfs).
_ESSENTIAL_HOOK = r"""set -eu
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"
echo MODULES=list > "$1/etc/initramfs-tools/conf.d/pam-unshare-vm"
printf '%s\n' virtio_pci virtio_blk crc32c_generic ext4 \
    > "$1/usr/share/initramfs-tools/modules.d/pam-unshare-vm"
"""

_CUSTOMIZE_HOOK = r"""set -eu
root="$1"
echo pam-unshare-vm > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpam-unshare-vm\n' > "$root/etc/hosts"
echo LANG=C.UTF-8 > "$root/etc/default/locale"
printf '/dev/vda\t/\text4\tdefaults\t0\t0\n' > "$root/etc/fstab"
: > "$root/etc/machine-id"
# No password login for root: '*' never matches a password. Not 'passwd --lock' ('!'): with
# UsePAM no (the admin sshd of provision-test-host) sshd refuses a '!'-locked account even with
# a key.
chroot "$root" usermod --password '*' root

mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/20-virtio.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
chroot "$root" systemctl enable --quiet systemd-networkd.service ssh.service

cat > "$root/usr/local/sbin/pam-unshare-vm-keys" <<'EOF'
#!/bin/sh
# root's authorized_keys from the kernel command line (tests/hosts/qemu_vm.py puts it there).
set -eu
for word in $(cat /proc/cmdline); do
    case "$word" in
    pam_unshare.authorized_key=*)
        umask 077
        mkdir -p /root/.ssh
        printf '%s' "${word#*=}" | base64 -d > /root/.ssh/authorized_keys.new
        mv -f /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
        ;;
    esac
done
EOF
chmod 755 "$root/usr/local/sbin/pam-unshare-vm-keys"
cat > "$root/etc/systemd/system/pam-unshare-vm-keys.service" <<'EOF'
[Unit]
Description=root's authorized_keys from the kernel command line
ConditionKernelCommandLine=pam_unshare.authorized_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pam-unshare-vm-keys

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable --quiet pam-unshare-vm-keys.service

for unit in apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer \
        e2scrub_reap.service man-db.timer systemd-firstboot.service \
        systemd-timesyncd.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
"""


class VmError(RuntimeError):
    """The VM image could not be built, or the VM could not be booted or driven."""


# --------------------------------------------------------------------------- #
# Image
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class VmImage:
    """A built image: a raw ext4 disk and the kernel and initrd to boot it with."""

    path: Path  # the cache directory holding the files below
    disk: Path
    kernel: Path
    initrd: Path
    kernel_version: str
    key: str

    @classmethod
    def load(cls, path: Path) -> VmImage:
        manifest = json.loads((path / _MANIFEST).read_text())
        return cls(
            path=path,
            disk=path / manifest["disk"],
            kernel=path / manifest["kernel"],
            initrd=path / manifest["initrd"],
            kernel_version=manifest["kernel_version"],
            key=manifest["key"],
        )


def image_key(mirrors: Sequence[str], packages: Sequence[str] = PACKAGES) -> str:
    """Cache key: changes with the mirrors, the packages, the hooks or the recipe version."""
    material = "\n".join(
        [
            _RECIPE_VERSION,
            SUITE,
            VARIANT,
            IMAGE_SIZE,
            *sorted(packages),
            "--",
            *mirrors,
            "--",
            _ESSENTIAL_HOOK,
            _CUSTOMIZE_HOOK,
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def build_image(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    packages: Sequence[str] = PACKAGES,
    *,
    log: Path | None = None,
) -> VmImage:
    """Return the cached VM image, building it first if needed (30-60 s).

    The image lives in ``cache_dir/vm-bookworm-<key>/``. It is built in a temporary
    directory next to it and renamed into place once complete (its manifest written last
    inside it), so an interrupted build never leaves half an image behind; a lock file
    serialises concurrent builders. mmdebstrap's and mkfs's output goes to *log* (default
    ``<cache_dir>/vm-bookworm-<key>.log``).
    """
    cache_dir = Path(cache_dir)
    mirrors = host_debian_mirrors()
    key = image_key(mirrors, packages)
    name = f"vm-{SUITE}-{key}"
    log = log or cache_dir / f"{name}.log"

    def build(tmp: Path, lock: IO[str]) -> None:
        started = time.monotonic()
        tree = tmp / "tree"
        with open(log, "wb") as out:
            run_logged(
                mmdebstrap(VARIANT, packages, ["--essential-hook=" + _ESSENTIAL_HOOK,
                                               "--customize-hook=" + _CUSTOMIZE_HOOK],
                           SUITE, tree, mirrors),
                out,
                lock,
                VmError,
            )
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            if len(kernels) != 1:
                raise VmError(f"expected one kernel in {tree / 'boot'}, found {kernels}")
            version = kernels[0].name[len("vmlinuz-") :]
            shutil.copyfile(kernels[0], tmp / "vmlinuz")
            shutil.copyfile(tree / "boot" / f"initrd.img-{version}", tmp / "initrd.img")
            run_logged(
                ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree),
                 str(tmp / "disk.raw"), IMAGE_SIZE],
                out,
                lock,
                VmError,
            )  # fmt: skip
        remove_tree(tree)
        # Read-only: QEMU opens it only as the backing file of throwaway overlays.
        (tmp / "disk.raw").chmod(0o444)
        manifest = {
            "key": key,
            "suite": SUITE,
            "variant": VARIANT,
            "packages": sorted(packages),
            "mirrors": list(mirrors),
            "kernel_version": version,
            "disk": "disk.raw",
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "build_seconds": round(time.monotonic() - started, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    final = cache_dir / name
    fresh = not (final / _MANIFEST).exists()
    publish(cache_dir, name, ".vm.lock", lambda path: (path / _MANIFEST).exists(), build)
    if fresh:
        _prune_other_images(cache_dir, keep=final)
    return VmImage.load(final)


def _prune_other_images(cache_dir: Path, keep: Path) -> None:
    """Delete the images of other keys (older recipes): each takes ~800 MiB of disk.

    Safe for a VM still running from one: QEMU holds its files open, and Linux keeps an
    unlinked file's data until the last close.
    """
    for old in cache_dir.glob(f"vm-{SUITE}-*"):
        if old != keep and old.is_dir():
            remove_tree(old)
            old.with_name(old.name + ".log").unlink(missing_ok=True)


# --------------------------------------------------------------------------- #
# The VM
# --------------------------------------------------------------------------- #


def _free_loopback_ports(count: int) -> list[int]:
    """*count* distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _remove_stale_run_dirs(parent: Path) -> None:
    """Remove the overlays of VMs whose owner died without stop() (e.g. SIGKILL)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(entry, ignore_errors=True)


def _die_with_parent() -> None:  # runs in qemu between fork and exec
    # If we die without stop(), qemu gets SIGTERM and exits (the guest just stops).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class QemuVm:
    """A booted Debian 12 VM, driven as root over ssh on a forwarded loopback port.

    Use as a context manager::

        with QemuVm(build_image(), Path("id_ed25519.pub")) as vm:
            print(vm.run("findmnt -no PROPAGATION /").stdout)

    *ssh_public_key* goes into root's authorized_keys; the private key is
    *ssh_private_key*, by default the public key's path without ``.pub``. The guest's
    ports 22 and 2222 are reachable at 127.0.0.1:``ssh_port`` and ``admin_port``.
    """

    def __init__(
        self,
        image: VmImage,
        ssh_public_key: Path,
        *,
        ssh_private_key: Path | None = None,
        memory_mb: int = 2048,
        cpus: int = 2,
        boot_timeout: float = 300.0,
        stop_timeout: float = 60.0,
        console_log: Path | None = None,
        name: str | None = None,
        extra_cmdline: Sequence[str] = (),
    ) -> None:
        self.image = image
        self.ssh_public_key = Path(ssh_public_key)
        if ssh_private_key is None:
            if self.ssh_public_key.suffix != ".pub":
                raise ValueError(f"{ssh_public_key}: no .pub suffix, pass ssh_private_key")
            ssh_private_key = self.ssh_public_key.with_suffix("")
        self.ssh_private_key = Path(ssh_private_key)
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.name = name or f"pu-vm-{os.getpid()}-{secrets.token_hex(3)}"
        self.console_log = console_log or Path(tempfile.gettempdir()) / f"{self.name}.console.log"
        self.qemu_log = self.console_log.with_name(self.console_log.name + ".qemu")
        self.extra_cmdline = list(extra_cmdline)
        self.ssh_port: int | None = None
        self.admin_port: int | None = None
        self.boot_seconds: float | None = None
        self.shutdown_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_dir: Path | None = None

    # -- lifecycle --------------------------------------------------------- #

    def __enter__(self) -> QemuVm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Boot the VM and wait until root can run ``true`` over ssh."""
        if self._proc is not None:
            raise VmError("VM already started")
        parent = Path(tempfile.gettempdir()) / _RUN_DIR_PARENT
        parent.mkdir(mode=0o700, exist_ok=True)
        _remove_stale_run_dirs(parent)
        self._run_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        try:
            overlay = self._run_dir / "overlay.qcow2"
            res = subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", str(self.image.disk), str(overlay)],
                capture_output=True,
                text=True,
            )  # fmt: skip
            if res.returncode != 0:
                raise VmError(f"qemu-img create failed: {res.stderr.strip()}")
            for attempt in range(3):
                self.ssh_port, self.admin_port = _free_loopback_ports(2)
                started = time.monotonic()
                self._launch(overlay)
                try:
                    self._wait_ssh(started + self.boot_timeout)
                except VmError:
                    # Lost the race for a port between choosing it and QEMU binding it.
                    if attempt < 2 and "host forwarding" in tail(self.qemu_log):
                        self._kill()
                        continue
                    raise
                self.boot_seconds = time.monotonic() - started
                return
        except BaseException:
            # No clean poweroff to wait for: the guest did not come up.
            self._kill()
            self._remove_run_dir()
            raise

    def qemu_argv(self, overlay: Path) -> list[str]:
        """The QEMU command line for the current ports."""
        key = base64.b64encode(self.ssh_public_key.read_bytes()).decode()
        if len(key) > _MAX_KEY_PARAM:
            raise VmError(f"{self.ssh_public_key} is too long for the kernel command line")
        cmdline = [
            "root=/dev/vda",
            "rootfstype=ext4",
            "rw",
            "console=ttyS0",
            "quiet",
            "systemd.show_status=false",
            "panic=-1",  # with -no-reboot: a panic ends QEMU instead of hanging
            *self.extra_cmdline,
            f"{_KEY_PARAM}={key}",
        ]
        netdev = ",".join(
            [
                "user",
                "id=n0",
                "restrict=on",  # the guest reaches nothing; the forwards below still work
                f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:{GUEST_SSH_PORT}",
                f"hostfwd=tcp:127.0.0.1:{self.admin_port}-:{GUEST_ADMIN_PORT}",
            ]
        )
        return [
            "qemu-system-x86_64",
            "-name", self.name,
            "-nodefaults",
            "-no-user-config",
            "-accel", "tcg,thread=multi",
            "-machine", "q35",
            "-cpu", "max",
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console_log}",
            "-no-reboot",
            "-kernel", str(self.image.kernel),
            "-initrd", str(self.image.initrd),
            "-append", " ".join(cmdline),
            # cache=unsafe: the overlay is thrown away, so the guest's flushes need not hit disk.
            "-drive", f"file={overlay},format=qcow2,if=virtio,cache=unsafe,discard=unmap",
            "-netdev", netdev,
            "-device", "virtio-net-pci,netdev=n0,romfile=",  # no iPXE ROM: -kernel boots
            "-device", "virtio-rng-pci",
        ]  # fmt: skip

    def _launch(self, overlay: Path) -> None:
        argv = self.qemu_argv(overlay)
        with open(self.qemu_log, "wb") as log:
            log.write(f"+ {shlex.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads here
            )

    def wait_for_ssh(self, port: int = GUEST_SSH_PORT, timeout: float = 60.0) -> None:
        """Wait until root runs ``true`` over ssh to the guest's *port* (22, or 2222 once an
        sshd listens there: a freshly started sshd takes a moment under emulation)."""
        self._wait_ssh(time.monotonic() + timeout, port)

    def _wait_ssh(self, deadline: float, port: int = GUEST_SSH_PORT) -> None:
        if self._proc is None:
            raise VmError("VM is not running")
        last = ""
        while True:
            if self._proc.poll() is not None:
                raise VmError(
                    f"QEMU exited with {self._proc.returncode}; "
                    f"{self.qemu_log}:\n{tail(self.qemu_log)}\n"
                    f"console {self.console_log}:\n{tail(self.console_log)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VmError(
                    f"no ssh to the VM's port {port} in time ({last.strip()}); "
                    f"console {self.console_log}:\n{tail(self.console_log)}"
                )
            try:
                res = subprocess.run(
                    self.ssh_argv(["true"], port, connect_timeout=5),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=min(30.0, max(remaining, 1.0)),
                )
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
                continue
            if res.returncode == 0:
                return
            last = res.stderr
            time.sleep(0.5)

    def stop(self) -> None:
        """Power the VM off (``systemctl poweroff``), kill QEMU after ``stop_timeout``.

        Always removes the overlay. Sets ``shutdown_seconds``.
        """
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                started = time.monotonic()
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        self.ssh_argv(["systemctl", "--no-block", "poweroff"], connect_timeout=5),
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=20,
                    )
                try:
                    proc.wait(timeout=self.stop_timeout)
                    self.shutdown_seconds = time.monotonic() - started
                except subprocess.TimeoutExpired:
                    print(
                        f"{self.name}: no clean poweroff in {self.stop_timeout:.0f}s, "
                        f"killing QEMU; console {self.console_log}",
                        file=sys.stderr,
                    )
            self._kill()
        finally:
            self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        run_dir, self._run_dir = self._run_dir, None
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # Unreaped, its PID (and so its process group) cannot have been recycled.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    # -- commands ---------------------------------------------------------- #

    def ssh_argv(
        self,
        cmd: Sequence[str] | str,
        port: int = GUEST_SSH_PORT,
        *,
        user: str = "root",
        identity: Path | None = None,
        tty: bool = False,
        connect_timeout: int = 30,
    ) -> list[str]:
        """The host command line that runs *cmd* in the VM over ssh to the guest's *port*.

        *cmd* is a shell command string (run by the user's login shell), or an argv list
        (quoted for it). *port* is the guest's port: 22 or 2222, reached through its
        loopback forward.
        """
        forwards = {GUEST_SSH_PORT: self.ssh_port, GUEST_ADMIN_PORT: self.admin_port}
        if port not in forwards:
            raise ValueError(f"guest port {port} is not forwarded (only {sorted(forwards)})")
        host_port = forwards[port]
        if host_port is None:
            raise VmError("VM is not running")
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        return [
            "ssh",
            "-F", "/dev/null",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=30",
            "-i", str(identity or self.ssh_private_key),
            "-p", str(host_port),
            "-tt" if tty else "-T",
            f"{user}@127.0.0.1",
            "--",
            remote,
        ]  # fmt: skip

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = False,
        timeout: float = 120.0,
        input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        port: int = GUEST_SSH_PORT,
    ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* (argv list, or a string for the remote shell) as root over ssh.

        Returns the CompletedProcess with decoded stdout/stderr (255 is ssh's own failure).
        With ``check=True`` a non-zero exit raises CalledProcessError (with output). On
        timeout the local ssh is killed and TimeoutExpired is raised.
        """
        argv = self.ssh_argv(cmd, port)
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # proc is unreaped: no PID reuse
            out, err = proc.communicate()
            raise
        result = subprocess.CompletedProcess(
            argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            )
        return result

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically write *data* to *path* in the VM (owner root)."""
        script = 'set -e; tmp="$1.pu-tmp.$$"; cat > "$tmp"; chmod "$2" "$tmp"; mv -f "$tmp" "$1"'
        self.run(["/bin/sh", "-c", script, "sh", path, f"{mode:o}"], input=data, check=True)

    def copy_in(self, local_path: Path, remote_path: str, mode: int | None = None) -> None:
        """Copy a local file into the VM (mode: the local file's permission bits by default)."""
        local_path = Path(local_path)
        if mode is None:
            mode = local_path.stat().st_mode & 0o7777
        self.write_file(remote_path, local_path.read_bytes(), mode)

    def read_file(self, path: str) -> str:
        return self.run(["cat", "--", path], check=True).stdout


def main() -> None:
    """Build (if needed), boot, show a few facts and timings, power off. For manual checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-seconds",
        type=float,
        default=0.0,
        help="keep the VM running this long before powering it off",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args()

    t0 = time.monotonic()
    image = build_image(args.cache_dir)
    build_seconds = time.monotonic() - t0
    stat = image.disk.stat()
    print(
        f"image {image.path} ready in {build_seconds:.1f}s: kernel {image.kernel_version}, "
        f"disk {stat.st_size / 2**30:.1f} GiB apparent, {stat.st_blocks * 512 / 2**20:.0f} MiB "
        f"used, initrd {image.initrd.stat().st_size / 2**20:.1f} MiB"
    )
    with tempfile.TemporaryDirectory(prefix="pu-vm-key-") as keydir:
        key = Path(keydir) / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qemu_vm.py", "-f", str(key)],
            check=True,
        )
        with QemuVm(image, key.with_suffix(".pub")) as vm:
            print(
                f"booted to ssh in {vm.boot_seconds:.1f}s "
                f"(ssh 127.0.0.1:{vm.ssh_port}, admin 127.0.0.1:{vm.admin_port}, "
                f"console {vm.console_log})"
            )
            t1 = time.monotonic()
            state = vm.run(["systemctl", "is-system-running", "--wait"], timeout=300)
            print(f"system {state.stdout.strip()} after {time.monotonic() - t1:.1f}s more")
            if state.stdout.strip() != "running":
                print(vm.run("systemctl list-units --failed --no-legend").stdout)
            print("propagation of /:", vm.run("findmnt -no PROPAGATION /").stdout.strip())
            print("kernel:", vm.run("uname -r").stdout.strip())
            print(vm.run("systemd-analyze; systemd-analyze blame | head -8").stdout.rstrip())
            if args.keep_seconds > 0:
                login = f"ssh -i {key} -p {vm.ssh_port} root@127.0.0.1"
                print(f"keeping it up {args.keep_seconds:.0f}s: {login}")
                time.sleep(args.keep_seconds)
        shutdown = f"{vm.shutdown_seconds:.1f}s" if vm.shutdown_seconds is not None else "killed"
    print(f"timings: build {build_seconds:.1f}s, boot {vm.boot_seconds:.1f}s, shutdown {shutdown}")


if __name__ == "__main__":
    main()
