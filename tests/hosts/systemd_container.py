"""A Debian 12 test host booted with real systemd as PID 1, in systemd-nspawn.

Why this host exists: under systemd, ``/`` is a *shared* mount, and /proc has
mounts below it (/proc/sys, ...). A PAM module that unshares the mount namespace
behaves differently there than on a machine where ``/`` is private (like the CI
VM itself). See "Test hosts on these machines" in DESIGN.md.

Plain Python on purpose (no pytest import): the pytest fixture lives in
``tests/hosts/fixtures.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

if __package__:
    from .cache import DEFAULT_CACHE_DIR, mmdebstrap, publish, run_logged, tail
else:  # run as a script: python3 tests/hosts/systemd_container.py
    from cache import (  # type: ignore[no-redef]
        DEFAULT_CACHE_DIR,
        mmdebstrap,
        publish,
        run_logged,
        tail,
    )

SUITE = "bookworm"  # the default release; build_rootfs(suite=...) makes the others
VARIANT = "minbase"
# What every test host has: systemd as PID 1 with logind, the entry paths, ssh, python3.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "sudo",
    "procps",
    "util-linux",
    "python3",
    "iproute2",
    "openssh-server",
    "passwd",
    "login",
    # The CLI package's one dependency outside python3 (test hosts have no network to fetch it).
    "python3-cffi-backend",
)
PACKAGES: tuple[str, ...] = (
    *BASE_PACKAGES,
    # The sidesteps of issue 13: the user's own systemd manager with a bus, cron and at jobs.
    "dbus-user-session",
    "cron",
    "at",
)
# What a release has on top of PACKAGES: Debian 13's entry paths (sudo-rs; run0 comes with
# systemd 257, sshd-session with OpenSSH 10).
SUITE_PACKAGES: Mapping[str, tuple[str, ...]] = {"trixie": ("sudo-rs",)}


def suite_packages(suite: str) -> tuple[str, ...]:
    return PACKAGES + SUITE_PACKAGES.get(suite, ())


# Bump when the way the root filesystem is made changes (hooks, options).
_RECIPE_VERSION = "2"
_PR_SET_PDEATHSIG = 1
# Hostname inside the container (written at build time; nspawn --machine sets it too).
_HOSTNAME = "pam-unshare-test"

# The environment of every command run inside the container: never leak the host's.
CONTAINER_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}

_SOURCES_LIST = Path("/etc/apt/sources.list")
_SOURCES_DIR = Path("/etc/apt/sources.list.d")


class ContainerError(RuntimeError):
    """The container could not be built, booted or driven."""


# --------------------------------------------------------------------------- #
# Root filesystem
# --------------------------------------------------------------------------- #


def _parse_one_line_sources(text: str) -> list[tuple[str, str, list[str]]]:
    """``deb [opts] URI SUITE COMP...`` lines -> (uri, suite, components)."""
    entries: list[tuple[str, str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=... signed-by=...]
        fields = line.split()
        if len(fields) >= 4:
            entries.append((fields[1], fields[2], fields[3:]))
    return entries


def _parse_deb822_sources(text: str) -> list[tuple[str, str, list[str]]]:
    """deb822 ``.sources`` stanzas -> (uri, suite, components) per URI x suite."""
    entries: list[tuple[str, str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        components = fields.get("components", "").split()
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append((uri, suite, components))
    return entries


def host_debian_mirrors(suite: str = SUITE) -> list[str]:
    """The host's apt sources for *suite* as one-line ``deb`` entries for mmdebstrap.

    Reads /etc/apt/sources.list, /etc/apt/sources.list.d/*.list and *.sources
    (files with other suffixes, e.g. ``*.disabled``, are ignored as apt does),
    and keeps the entries for *suite* and its ``-updates``/``-security`` pockets.
    An empty list means "let mmdebstrap pick its default mirror".
    """
    entries: list[tuple[str, str, list[str]]] = []
    if _SOURCES_LIST.is_file():
        entries += _parse_one_line_sources(_SOURCES_LIST.read_text())
    if _SOURCES_DIR.is_dir():
        for path in sorted(_SOURCES_DIR.iterdir()):
            if path.suffix == ".list":
                entries += _parse_one_line_sources(path.read_text())
            elif path.suffix == ".sources":
                entries += _parse_deb822_sources(path.read_text())
    lines: list[str] = []
    for uri, entry_suite, components in entries:
        if entry_suite != suite and not entry_suite.startswith((suite + "-", suite + "/")):
            continue
        line = " ".join(["deb", uri, entry_suite, *(components or ["main"])])
        if line not in lines:
            lines.append(line)
    # The base suite must come from a mirror; without it fall back to the default.
    if not any(line.split()[2] == suite for line in lines):
        return []
    return lines


def rootfs_key(mirrors: Sequence[str], packages: Sequence[str] = PACKAGES,
               suite: str = SUITE) -> str:
    """Cache key: changes whenever the package list (or suite, mirrors, recipe) changes."""
    material = "\n".join([_RECIPE_VERSION, suite, VARIANT, *sorted(packages), "--", *mirrors])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def build_rootfs(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    packages: Sequence[str] | None = None,
    *,
    log: Path | None = None,
    suite: str = SUITE,
) -> Path:
    """Return a cached root filesystem of Debian *suite* (default: Debian 12), building it
    first if needed; *packages* default to ``suite_packages(suite)``.

    The result lives at ``cache_dir/rootfs-<suite>-<hash>`` where the hash
    covers the package list. It is built into a temporary directory next to it
    and renamed into place only when mmdebstrap succeeded, so an interrupted
    build never leaves a half root filesystem behind. A lock file serialises
    concurrent builders. The mmdebstrap output goes to *log* (default:
    ``<cache_dir>/rootfs-bookworm-<hash>.log``).
    """
    packages = suite_packages(suite) if packages is None else packages
    mirrors = host_debian_mirrors(suite)
    key = rootfs_key(mirrors, packages, suite)
    name = f"rootfs-{suite}-{key}"
    log = log or Path(cache_dir) / f"{name}.log"

    def build(tmp: Path, lock: IO[str]) -> None:
        argv = mmdebstrap(VARIANT, packages, [
            # A fixed, resolvable hostname (sudo warns otherwise), a locale file
            # (pam_env warns otherwise) and an empty machine-id so that every
            # boot gets a fresh one.
            f'--customize-hook=echo {_HOSTNAME} > "$1/etc/hostname"',
            "--customize-hook=printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n'"
            f' {_HOSTNAME} > "$1/etc/hosts"',
            '--customize-hook=echo LANG=C.UTF-8 > "$1/etc/default/locale"',
            '--customize-hook=: > "$1/etc/machine-id"',
        ], suite, tmp, mirrors)
        with open(log, "wb") as out:
            run_logged(argv, out, lock, ContainerError)

    return publish(Path(cache_dir), name, ".lock",
                   lambda final: (final / "etc" / "os-release").exists(), build)


# --------------------------------------------------------------------------- #
# /proc helpers (host side)
# --------------------------------------------------------------------------- #


def _ppid_map() -> dict[int, int]:
    result: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        result[int(entry.name)] = int(fields[1])
    return result


def _descendants(root: int) -> list[int]:
    ppids = _ppid_map()
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _nspid(pid: int | str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# --------------------------------------------------------------------------- #
# The container
# --------------------------------------------------------------------------- #


class SystemdContainer:
    """A booted ``systemd-nspawn`` container with systemd as PID 1.

    Use as a context manager::

        with SystemdContainer(build_rootfs()) as ct:
            print(ct.run("findmnt -no PROPAGATION /").stdout)

    Commands run as root inside all of the container's namespaces (and its
    root directory) through ``nsenter --target LEADER --all``, and inside a
    cgroup of the container's tree, so that logind/pam_systemd treat them like
    processes of that machine. ``--volatile=overlay`` keeps the cached root
    filesystem untouched: every change lives in a tmpfs that dies with the
    container.
    """

    def __init__(
        self,
        rootfs: Path,
        name: str | None = None,
        *,
        log_path: Path | None = None,
        boot_timeout: float = 120.0,
        stop_timeout: float = 30.0,
        private_network: bool = True,
        network_namespace: Path | None = None,
    ) -> None:
        self.rootfs = Path(rootfs)
        self.name = name or f"pu-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"nspawn-{self.name}.log"
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.private_network = private_network
        self.network_namespace = network_namespace
        self.leader: int | None = None
        self.state: str | None = None  # "running" or "degraded" once booted
        self.failed_units: list[str] = []
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._leader_fd: int | None = None  # pidfd: signals never hit a recycled PID
        self._host_cgroups: list[Path] = []
        self._cgroup_procs: list[Path] = []

    # -- lifecycle --------------------------------------------------------- #

    def __enter__(self) -> SystemdContainer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Boot the container and wait until systemd reports it is up."""
        if self._proc is not None:
            raise ContainerError("container already started")
        started = time.monotonic()
        argv = [
            "systemd-nspawn",
            "-D",
            str(self.rootfs),
            "--keep-unit",
            "--register=no",
            "--volatile=overlay",
            "-b",
            f"--machine={self.name}",
        ]
        if self.network_namespace is not None:
            # A namespace the tests made (hosts/netns.py): reachable from here, from nowhere else.
            argv.append(f"--network-namespace-path={self.network_namespace}")
        elif self.private_network:
            # Loopback only: otherwise the container's sshd binds the host's port 22.
            argv.append("--private-network")
        self._host_cgroups = self._make_host_cgroups()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._join_host_cgroups,  # noqa: PLW1509 - no threads here
            )
        try:
            self.leader = self._find_leader(started + self.boot_timeout)
            self._leader_fd = os.pidfd_open(self.leader)
            self._cgroup_procs = self._make_exec_cgroups()
            self._wait_booted(started + self.boot_timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started

    def stop(self) -> None:
        """Power the container off; SIGKILL it after ``stop_timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self.leader = None
        if proc.poll() is None:
            # nspawn turns SIGTERM into a clean shutdown request to the container's
            # systemd (SIGRTMIN+3 for -b), then exits when the container is gone.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"systemd-nspawn {self.name}: no clean poweroff in "
                    f"{self.stop_timeout:.0f}s, killing it",
                    file=sys.stderr,
                )
        # Whatever is left: SIGKILL the container's PID 1 first (the kernel then
        # kills every process of its PID namespace), then nspawn's process group
        # (while nspawn is unreaped its PID, and so its group, cannot be recycled).
        leader_fd, self._leader_fd = self._leader_fd, None
        if leader_fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(leader_fd, signal.SIGKILL)
            os.close(leader_fd)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._cgroup_procs = []
        for group in self._host_cgroups:
            _remove_cgroup_tree(group)
        self._host_cgroups = []

    def _find_leader(self, deadline: float) -> int:
        """The host PID of the container's PID 1 once it has exec'ed systemd."""
        assert self._proc is not None
        my_depth = len(_nspid("self"))
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited with {self._proc.returncode} while booting; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            for pid in _descendants(self._proc.pid):
                try:
                    nspid = _nspid(pid)
                    comm = _comm(pid)
                except OSError:
                    continue
                if len(nspid) == my_depth + 1 and nspid[-1] == 1 and comm == "systemd":
                    return pid
            time.sleep(0.05)
        raise ContainerError(
            f"no systemd PID 1 appeared under systemd-nspawn; log {self.log_path}:\n"
            f"{tail(self.log_path)}"
        )

    def _wait_booted(self, deadline: float) -> None:
        last = ""
        offline_deadline = min(deadline, time.monotonic() + 15)
        while time.monotonic() < deadline:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                res = self.run(["systemctl", "is-system-running", "--wait"], timeout=remaining)
            except subprocess.TimeoutExpired:
                break
            state = res.stdout.strip()
            last = f"rc {res.returncode}: {res.stdout}{res.stderr}"
            if state in ("running", "degraded"):
                self.state = state
                if state == "degraded":
                    failed = self.run(
                        ["systemctl", "list-units", "--failed", "--plain", "--no-legend"]
                    ).stdout
                    self.failed_units = [ln.split()[0] for ln in failed.splitlines() if ln]
                    print(
                        f"container {self.name} is degraded; failed units:\n{failed}",
                        file=sys.stderr,
                    )
                return
            if state in ("maintenance", "stopping"):
                break
            # Not up yet: "offline" until PID 1 has created /run/systemd/system,
            # no output while the bus is missing ("Failed to connect to bus").
            if state == "offline" and time.monotonic() > offline_deadline:
                break
            time.sleep(0.1)
        raise ContainerError(
            f"container {self.name} did not finish booting ({last.strip()}); "
            f"log {self.log_path}:\n{tail(self.log_path)}"
        )

    # -- cgroups ----------------------------------------------------------- #

    def _make_host_cgroups(self) -> list[Path]:
        """A cgroup of its own for this nspawn in the hierarchies systemd uses.

        With ``--keep-unit`` nspawn puts the container into ``payload/`` below its
        own cgroup. Without systemd on the host every nspawn would share the same
        ``/payload`` (two containers would fight over it), and it stays behind.
        So nspawn starts in ``<our cgroup>/pam-unshare-<name>``, removed on stop.
        """
        groups: list[Path] = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers not in ("", "name=systemd"):
                continue
            mount = _cgroup_mount(controllers)
            if mount is None:
                continue
            parent = mount / path.lstrip("/")
            _remove_stale_cgroups(parent)
            group = parent / f"pam-unshare-{self.name}"
            try:
                group.mkdir(exist_ok=True)
            except OSError:
                continue
            groups.append(group)
        return groups

    def _join_host_cgroups(self) -> None:  # runs in nspawn between fork and exec
        for group in self._host_cgroups:
            with contextlib.suppress(OSError):
                (group / "cgroup.procs").write_text("0")
        # If we die without stop() (SIGKILL), nspawn gets SIGTERM: a clean poweroff.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    def _make_exec_cgroups(self) -> list[Path]:
        """Create a cgroup next to the container's init.scope in systemd's hierarchies.

        A process that nsenter puts into the container keeps the host cgroup it
        came from, which lies outside the container's cgroup namespace; logind
        then cannot move it into a session scope and pam_systemd fails. So each
        command first joins ``<container cgroup>/pam-unshare-exec``.
        """
        assert self.leader is not None
        procs: list[Path] = []
        for line in Path(f"/proc/{self.leader}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mount = _cgroup_mount(controllers)
            if mount is None:
                continue
            # The leader sits in <container root>/init.scope in the hierarchies that
            # systemd manages (name=systemd, the unified one); leave the others alone.
            leader_group = mount / path.lstrip("/")
            if leader_group.name != "init.scope":
                continue
            group = leader_group.parent / "pam-unshare-exec"
            try:
                group.mkdir(exist_ok=True)
            except OSError:
                continue
            procs.append(group / "cgroup.procs")
        return procs

    def _join_cgroups(self) -> None:  # runs in the child between fork and exec
        for procs in self._cgroup_procs:
            with contextlib.suppress(OSError):
                procs.write_text("0")

    # -- commands ---------------------------------------------------------- #

    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        """The host command line that runs *argv* as root inside the container."""
        if self.leader is None:
            raise ContainerError("container is not running")
        return ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", "--", *argv]

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
    ) -> subprocess.CompletedProcess[str]:
        """Run *cmd* (an argv list, or a string for ``/bin/sh -c``) as root inside.

        Returns the CompletedProcess with decoded stdout/stderr. With
        ``check=True`` a non-zero exit raises CalledProcessError (with output).
        On timeout the whole process group is killed (nsenter and what it
        started inside) and TimeoutExpired is raised.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.Popen(
            self.nsenter_argv(argv),
            stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(CONTAINER_ENV),
            start_new_session=True,
            preexec_fn=self._join_cgroups,  # noqa: PLW1509 - no threads here
        )
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # proc is unreaped: no PID reuse
            out, err = proc.communicate()
            raise
        result = subprocess.CompletedProcess(
            proc.args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, argv, result.stdout, result.stderr
            )
        return result

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically write *data* to *path* inside the container (owner root)."""
        script = 'set -e; tmp="$1.pu-tmp.$$"; cat > "$tmp"; chmod "$2" "$tmp"; mv -f "$tmp" "$1"'
        self.run(["/bin/sh", "-c", script, "sh", path, f"{mode:o}"], input=data, check=True)

    def read_file(self, path: str) -> str:
        return self.run(["cat", "--", path], check=True).stdout

    def journal(self, unit: str | None = None, *extra: str) -> str:
        """This boot's journal (all of it, or one unit's), as text; *extra* goes to journalctl."""
        argv = ["journalctl", "-b", "-q", "--no-pager", "-o", "short-precise"]
        if unit is not None:
            argv += ["-u", unit]
        argv += list(extra)
        res = self.run(argv)
        # rc 1 without a message is "no entries matched" (e.g. with --grep).
        if res.returncode != 0 and (res.returncode != 1 or res.stderr.strip()):
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res.stdout

    def processes(self) -> Iterator[int]:
        """Host PIDs of every process in the container's PID namespace."""
        if self.leader is None:
            return
        target = os.readlink(f"/proc/{self.leader}/ns/pid")
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry.name}/ns/pid") == target:
                        yield int(entry.name)


_STALE_GROUP = re.compile(r"pam-unshare-pu-test-(\d+)-[0-9a-f]+")


def _remove_stale_cgroups(parent: Path) -> None:
    """Remove the cgroups of containers whose owner died without stop() (e.g. SIGKILL)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _STALE_GROUP.fullmatch(entry.name)
            if match and not Path(f"/proc/{match[1]}").exists():
                _remove_cgroup_tree(entry, timeout=0)


def _remove_cgroup_tree(group: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup and its children, deepest first.

    Right after the container is gone its cgroups can still count as populated for a moment
    (EBUSY), so retry for up to *timeout* seconds; then leave what is still busy.
    """
    deadline = time.monotonic() + timeout
    while group.is_dir():
        for dirpath, _dirnames, _files in os.walk(group, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not group.is_dir() or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def _cgroup_mount(controllers: str) -> Path | None:
    """Where the host mounted the hierarchy named in a /proc/PID/cgroup line."""
    wanted = set(controllers.split(",")) if controllers else set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _, options = post.split(" ", 2)
        mountpoint = Path(pre.split()[4])
        if not controllers and fstype == "cgroup2":
            return mountpoint
        if fstype == "cgroup":
            opts = set(options.split()[-1].split(","))
            if wanted and wanted <= opts:
                return mountpoint
    return None


def main() -> None:
    """Build (if needed), boot, show a few facts, power off. For manual checks."""
    t0 = time.monotonic()
    rootfs = build_rootfs()
    t1 = time.monotonic()
    print(f"rootfs {rootfs} ready in {t1 - t0:.1f}s")
    with SystemdContainer(rootfs) as ct:
        print(f"booted in {ct.boot_seconds:.1f}s, state {ct.state}, leader {ct.leader}")
        print(ct.run("findmnt -no PROPAGATION /; cat /proc/1/comm; ps -e -o pid,comm").stdout)
    print(
        "stopped; nspawn left:",
        subprocess.run(["pgrep", "-a", "systemd-nspawn"], capture_output=True, text=True).stdout
        or "none",
    )


if __name__ == "__main__":
    main()
