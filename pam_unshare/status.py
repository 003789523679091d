"""The facts `pam-unshare status` reports, as one JSON-ready dict."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from pam_unshare import __version__, audit, dbuspolicy, options, paths, system, usermanager
from pam_unshare.errors import Refused
from pam_unshare.stacks import PamTree


def _problem_text(path: Path) -> str | None:
    problem = system.module_problem(path)
    return str(problem) if problem else None


def module_facts() -> Dict[str, object]:
    """The built module, and the copy PAM would load by name: is it there, is it the same?"""
    try:
        built_path: Path | None = paths.module_path()
    except FileNotFoundError:
        built_path = None
    built_sha = system.sha256(built_path) if built_path else None
    directory = paths.module_dir()
    installed: Dict[str, object] | None = None
    if directory is not None:
        target = directory / paths.MODULE_NAME
        present = target.is_file()
        sha = system.sha256(target) if present else None
        installed = {
            "path": str(target),
            "present": present,
            "sha256": sha,
            "same_as_built": bool(present and built_sha and sha == built_sha),
            "problem": _problem_text(target) if present else None,
        }
    return {
        "version": __version__,
        "built": {"path": str(built_path) if built_path else None, "sha256": built_sha},
        "module_dir": str(directory) if directory else None,
        "installed": installed,
    }


def _enabled(tree: PamTree) -> List[Dict[str, object]]:
    found = []
    for entry in audit.enabled(tree):
        parsed, rejections = options.parse(entry.args)
        found.append({
            "service": entry.service,
            "via": entry.via,
            "file": str(tree.path(entry.file)),
            "line": entry.line,
            "module": entry.module,
            "options": list(entry.args),
            "rejected": [f"{r.argument}: {r.reason}" for r in rejections],
            "effective": {
                "onerr": parsed.onerr, "propagation": parsed.propagation,
                "on_logout": parsed.on_logout, "scope": parsed.scope,
                "max_sessions": parsed.max_sessions, "debug": parsed.debug,
                "exempt_users": None if parsed.exempt_users is None
                else list(parsed.exempt_users),
                "exempt_groups": None if parsed.exempt_groups is None
                else list(parsed.exempt_groups),
                "only_groups": None if parsed.only_groups is None
                else list(parsed.only_groups),
            },
        })
    return found


def _uncovered(tree: PamTree, unit_dir: Path | None) -> List[Dict[str, str]]:
    """Each way around the isolation, with the command that closes it. systemd-user is closed by
    a unit drop-in, never by a PAM line (usermanager.py)."""
    found = [{"service": way.service, "what": way.what, "why": way.why,
              "close": f"pam-unshare enable {way.service}"}
             for way in audit.coverage(tree) if way.service != usermanager.SERVICE]
    policy = dbuspolicy.state()
    if not policy.closed:
        why = {"missing": "no pam-unshare.conf in /etc/dbus-1/system.d or "
                          "/usr/share/dbus-1/system.d",
               "broken": f"{policy.path} does not parse: dbus-daemon skips it, dbus-broker "
                         f"rejects its whole configuration (no system bus at the next boot)",
               "modified": f"{policy.path} is not the shipped policy: the bus may enforce "
                           f"none of it"}[policy.state]
        found.append({"service": "system bus", "what": "systemd's process lists over D-Bus "
                      "(systemctl status, loginctl)", "why": why,
                      "close": "pam-unshare install (or the libpam-unshare package)"})
    if usermanager.unit_exists():
        found += _user_manager_ways(unit_dir)
    return found


def _user_manager_ways(unit_dir: Path | None) -> List[Dict[str, str]]:
    what = audit.SESSION_SERVICES[usermanager.SERVICE]
    close = f"pam-unshare enable {usermanager.SERVICE}"
    if unit_dir is None:
        return [{"service": usermanager.SERVICE, "what": what,
                 "why": "no unit directory goes with this PAM directory (--unit-dir)",
                 "close": close}]
    try:
        installed = usermanager.is_installed(unit_dir)
    except Refused as error:
        return [{"service": usermanager.SERVICE, "what": what,
                 "why": f"its drop-in cannot be read: {error}", "close": close}]
    if not installed:
        return [{"service": usermanager.SERVICE, "what": what,
                 "why": f"no {usermanager.DROPIN_DIR}/{usermanager.DROPIN_NAME} in {unit_dir}",
                 "close": close}]
    stale = usermanager.managers_without_it()
    if not stale:
        return []
    units = " ".join(f"user@{uid}.service" for uid in stale)
    return [{"service": usermanager.SERVICE, "what": "user managers started before the drop-in",
             "why": f"still see every process: {units}", "close": f"systemctl restart {units}"}]


def collect(pam_dir: Path,
            unit_dir: Path | None = usermanager.DEFAULT_UNIT_DIR) -> Dict[str, object]:
    tree = PamTree(pam_dir)
    findings = audit.check(tree)
    return {
        "version": __version__,
        "pam_dir": str(pam_dir),
        "vendor_dir": str(tree.vendor_dir) if tree.vendor_dir else None,
        "module": module_facts(),
        "enabled": _enabled(tree),
        "kernel": system.kernel_support().as_dict(),
        "uncovered": _uncovered(tree, unit_dir),
        "dbus_policy": dbuspolicy.state().as_dict(),
        "problems": [str(f) for f in findings if f.problem],
        "warnings": [str(f) for f in findings if not f.problem],
    }
