"""The facts `pam-unshare status` reports, as typed records; Status.as_dict() is `--json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List

from pam_unshare import __version__, audit, dbuspolicy, options, paths, system, usermanager
from pam_unshare.errors import Refused
from pam_unshare.stacks import PamTree


@dataclass(frozen=True)
class BuiltModule:
    path: str | None  # None: the package was not built
    sha256: str | None


@dataclass(frozen=True)
class InstalledModule:
    """The copy PAM loads by name, in its module directory."""

    path: str
    present: bool
    sha256: str | None
    same_as_built: bool
    problem: str | None


@dataclass(frozen=True)
class ModuleFacts:
    version: str
    built: BuiltModule
    module_dir: str | None
    installed: InstalledModule | None  # None: no PAM module directory found


@dataclass(frozen=True)
class EnabledService:
    service: str
    via: str | None  # the included file that runs the module, if not the service's own
    file: str
    line: int
    module: str
    options: List[str]  # as written
    rejected: List[str]  # "argument: reason", what the module ignores
    effective: options.Options  # what the module runs with


@dataclass(frozen=True)
class Uncovered:
    """A way around the isolation, and the command that closes it."""

    service: str
    what: str
    why: str
    close: str


@dataclass(frozen=True)
class Status:
    version: str
    pam_dir: str
    vendor_dir: str | None
    module: ModuleFacts
    enabled: List[EnabledService]
    kernel: system.KernelSupport
    uncovered: List[Uncovered]
    dbus_policy: dbuspolicy.PolicyState
    problems: List[str]
    warnings: List[str]

    def as_dict(self) -> Dict[str, object]:
        """The JSON of `status --json` (kernel and D-Bus policy add what they derive)."""
        data = asdict(self)
        data["kernel"] = self.kernel.as_dict()
        data["dbus_policy"] = self.dbus_policy.as_dict()
        return data


def _problem_text(path: Path) -> str | None:
    problem = system.module_problem(path)
    return str(problem) if problem else None


def module_facts() -> ModuleFacts:
    """The built module, and the copy PAM would load by name: is it there, is it the same?"""
    try:
        built_path: Path | None = paths.module_path()
    except FileNotFoundError:
        built_path = None
    built_sha = system.sha256(built_path) if built_path else None
    directory = paths.module_dir()
    installed = None
    if directory is not None:
        target = directory / paths.MODULE_NAME
        present = target.is_file()
        sha = system.sha256(target) if present else None
        installed = InstalledModule(
            path=str(target), present=present, sha256=sha,
            same_as_built=bool(present and built_sha and sha == built_sha),
            problem=_problem_text(target) if present else None)
    return ModuleFacts(version=__version__,
                       built=BuiltModule(str(built_path) if built_path else None, built_sha),
                       module_dir=str(directory) if directory else None, installed=installed)


def _enabled(tree: PamTree) -> List[EnabledService]:
    found = []
    for entry in audit.enabled(tree):
        parsed, rejections = options.parse(entry.args)
        found.append(EnabledService(
            service=entry.service, via=entry.via, file=str(tree.path(entry.file)),
            line=entry.line, module=entry.module, options=list(entry.args),
            rejected=[f"{r.argument}: {r.reason}" for r in rejections], effective=parsed))
    return found


def _uncovered(tree: PamTree, unit_dir: Path | None) -> List[Uncovered]:
    """Each way around the isolation, with the command that closes it. systemd-user is closed by
    a unit drop-in, never by a PAM line (usermanager.py)."""
    found = [Uncovered(way.service, way.what, way.why, f"pam-unshare enable {way.service}")
             for way in audit.coverage(tree) if way.service != usermanager.SERVICE]
    policy = dbuspolicy.state()
    if not policy.closed:
        why = {"missing": "no pam-unshare.conf in /etc/dbus-1/system.d or "
                          "/usr/share/dbus-1/system.d",
               "broken": f"{policy.path} does not parse: dbus-daemon skips it, dbus-broker "
                         f"rejects its whole configuration (no system bus at the next boot)",
               "modified": f"{policy.path} is not the shipped policy: the bus may enforce "
                           f"none of it"}[policy.state]
        found.append(Uncovered("system bus", "systemd's process lists over D-Bus "
                               "(systemctl status, loginctl)", why,
                               "pam-unshare install (or the libpam-unshare package)"))
    if usermanager.unit_exists():
        found += _user_manager_ways(unit_dir)
    return found


def _user_manager_ways(unit_dir: Path | None) -> List[Uncovered]:
    what = audit.SESSION_SERVICES[usermanager.SERVICE]
    close = f"pam-unshare enable {usermanager.SERVICE}"
    if unit_dir is None:
        return [Uncovered(usermanager.SERVICE, what,
                          "no unit directory goes with this PAM directory (--unit-dir)", close)]
    try:
        installed = usermanager.is_installed(unit_dir)
    except Refused as error:
        return [Uncovered(usermanager.SERVICE, what, f"its drop-in cannot be read: {error}",
                          close)]
    if not installed:
        return [Uncovered(usermanager.SERVICE, what,
                          f"no {usermanager.DROPIN_DIR}/{usermanager.DROPIN_NAME} in {unit_dir}",
                          close)]
    stale = usermanager.managers_without_it()
    if not stale:
        return []
    units = " ".join(f"user@{uid}.service" for uid in stale)
    return [Uncovered(usermanager.SERVICE, "user managers started before the drop-in",
                      f"still see every process: {units}", f"systemctl restart {units}")]


def collect(pam_dir: Path, unit_dir: Path | None = usermanager.DEFAULT_UNIT_DIR) -> Status:
    tree = PamTree(pam_dir)
    findings = audit.check(tree)
    return Status(
        version=__version__,
        pam_dir=str(pam_dir),
        vendor_dir=str(tree.vendor_dir) if tree.vendor_dir else None,
        module=module_facts(),
        enabled=_enabled(tree),
        kernel=system.kernel_support(),
        uncovered=_uncovered(tree, unit_dir),
        dbus_policy=dbuspolicy.state(),
        problems=[str(f) for f in findings if f.problem],
        warnings=[str(f) for f in findings if not f.problem],
    )
