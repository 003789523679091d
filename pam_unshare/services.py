"""Enabling and disabling the module for PAM services: validate everything, plan every file's new
text, refuse a plan that could lock anyone out, then write (through pamd) under one lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Set

from pam_unshare import audit, options, pamd, system
from pam_unshare.errors import Failed, NeedsRoot, Refused
from pam_unshare.stacks import PamTree, StackError, is_service_name

DEFAULT_PAM_DIR = Path("/etc/pam.d")
# What a refusal of ours must keep from breaking: findings of these kinds about a line we add.
_BLOCKING = ("order", "module", "stack")


@dataclass(frozen=True)
class Change:
    service: str
    path: Path
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    @property
    def line(self) -> int | None:
        """The line number of ours after the change, if the file has one."""
        ours = pamd.parse(self.after).ours()
        return ours[0].number if ours else None


@dataclass
class Outcome:
    changes: List[Change] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    backups: Dict[str, Path | None] = field(default_factory=dict)


def validate_options(arguments: Sequence[str]) -> None:
    """Refuses any option the module's own parser rejects."""
    parsed, rejections = options.parse(arguments)
    if rejections:
        text = "; ".join(f'"{r.argument}": {r.reason}' for r in rejections)
        raise Refused(f"invalid option {text}; nothing written")
    missing = options.unresolved_groups(parsed)
    if missing:
        raise Refused(f"no group named {', '.join(missing)} on this host (only_groups would "
                      f"refuse every session, exempt_groups would exempt nobody); nothing "
                      f"written")


def validate_module(module: str) -> None:
    """Refuses a module path PAM could not load: `session required` with a missing module makes
    every session of the service fail."""
    if os.path.basename(module) != pamd.MODULE_TOKEN:
        raise Refused(f'--module must name a file called {pamd.MODULE_TOKEN}, not "{module}"')
    if any(c.isspace() or c in "#[]\\" for c in module):
        raise Refused(f'--module "{module}" has a blank or one of # [ ] \\, which PAM would '
                      f"not read back as one module path")
    resolved = system.resolve_module(module)
    if resolved is None:
        raise Refused(f"cannot tell where PAM loads {module} from (no PAM module directory "
                      f"found); pass --module /absolute/path/{pamd.MODULE_TOKEN}")
    problem = system.module_problem(resolved)
    if problem and problem.unsafe:
        raise Refused(f"refusing to use {resolved}: {problem}, and PAM would run whatever is "
                      f"there as root in every login; nothing written")
    if problem:
        hint = "" if module.startswith("/") else " (run `pam-unshare install` first)"
        raise Refused(f"{problem}: every session would fail{hint}; nothing written")


def require_namespaces(services: Sequence[str], arguments: Sequence[str]) -> str | None:
    """Runs the kernel probe (root only: it creates the namespaces a session gets) and refuses
    when they cannot be created and the line would say onerr=fail: every login through SERVICES
    would fail, root's (exempt_users= or not) included. With onerr=succeed, returns a note."""
    if os.geteuid() != 0:
        return None  # the probe needs root; so does writing a live PAM directory
    problems = system.kernel_support().problems()
    if not problems:
        return None
    why = "; ".join(problems)
    if options.parse(arguments)[0].onerr == "fail":
        raise Refused(f"sessions cannot get their own PID and mount namespaces on this host "
                      f"({why}): with onerr=fail every login through {', '.join(services)} "
                      f"would fail, root's included; nothing written")
    return (f"sessions cannot get their own PID and mount namespaces on this host ({why}): "
            f"with onerr=succeed they will run without isolation")


def _check_pam_dir(pam_dir: Path) -> None:
    if not pam_dir.is_dir():
        raise Refused(f"{pam_dir}: no such directory")


def _require_write(pam_dir: Path, command: str) -> None:
    if os.access(pam_dir, os.W_OK):
        return
    if os.geteuid() != 0:
        raise NeedsRoot(f"pam-unshare {command} must run as root: it rewrites files in "
                        f"{pam_dir} (try --dry-run to see the change)")
    raise Failed(f"{pam_dir} is not writable")


def _load(directory: pamd.PamDir, service: str) -> pamd.Original:
    if not is_service_name(service):
        raise Refused(f'"{service}" is not a PAM service name; nothing written')
    path = directory.path / service
    original = directory.read(service)
    if original is None:
        raise Refused(f"unknown service {service}: {path} does not exist; nothing written")
    try:
        pamd.parse(original.text)
    except pamd.ParseError as error:
        raise Refused(f"{path} does not parse ({error}); refusing to edit it, nothing "
                      f"written") from None
    return original


def _reached_through(tree: PamTree, service: str) -> str | None:
    """The other file whose line of ours SERVICE's session stack reaches, if any."""
    try:
        stack = tree.session_stack(service)
    except StackError as error:
        raise Refused(f"{tree.path(service)}: its session stack does not load ({error}); "
                      f"nothing written") from None
    return next((e.file for e in stack if e.rule.is_ours and e.file != service), None)


def _check_reads_back(service: str, text: str, module: str, arguments: Sequence[str]) -> None:
    """The planned file, parsed as PAM will: exactly our one line, with MODULE and ARGUMENTS."""
    ours = pamd.parse(text).ours()
    if len(ours) != 1 or (ours[0].module, ours[0].args) != (module, tuple(arguments)):
        raise Refused(f"{service}: the new line would not read back as written; nothing "
                      f"written")


def _skip_covered(tree: PamTree, requested: List[str], before: Dict[str, str],
                  planned: Dict[str, str], outcome: Outcome) -> Dict[str, str]:
    """Drops the services whose stack already reaches the module through an included file
    (su-l includes su): a stack should run it once. Returns each requested file's final text."""
    skipped: Dict[str, str] = {}
    while True:
        final = {s: before[s] if s in skipped else planned[s] for s in requested}
        view = tree.with_overrides(final)
        newly = {}
        for service in requested:
            via = None if service in skipped else _reached_through(view, service)
            if via:
                newly[service] = via
        if not newly:
            break
        skipped.update(newly)
    for service, via in skipped.items():
        outcome.skipped.append(service)
        outcome.notes.append(f"{service}: skipped: its session stack already runs "
                             f"pam_unshare.so through {via} (a stack should run it once)")
    return final


def enable(services: Sequence[str], arguments: Sequence[str] = (),
           module: str = pamd.MODULE_TOKEN, pam_dir: Path = DEFAULT_PAM_DIR,
           dry_run: bool = False) -> Outcome:
    """Adds `session required MODULE ARGUMENTS` to each service's file, after its other session
    lines and includes, or updates the line that is there. Refuses (errors.Refused, nothing
    written) an invalid option, an unknown service, a file that does not parse, a module PAM
    could not load or someone else controls, a host where sessions cannot get their namespaces
    (with onerr=fail), or a change that puts our line before another session module of any
    stack. Writes every file or none."""
    validate_options(arguments)
    validate_module(module)
    _check_pam_dir(pam_dir)
    if not dry_run:
        _require_write(pam_dir, "enable")
    requested = list(dict.fromkeys(services))
    outcome = Outcome()
    note = require_namespaces(requested, arguments)
    if note:
        outcome.notes.append(note)
    with pamd.PamDir(pam_dir, lock=not dry_run) as directory:
        originals = {service: _load(directory, service) for service in requested}
        before = {service: originals[service].text for service in requested}
        tree = PamTree(pam_dir, before)
        line = pamd.session_line(module, arguments)
        planned = {s: pamd.with_session_line(before[s], line) for s in requested}
        for service, text in planned.items():
            _check_reads_back(service, text, module, arguments)
        final = _skip_covered(tree, requested, before, planned, outcome)
        changed = {s for s in requested if final[s] != before[s]}
        findings = audit.check(tree.with_overrides(final))
        # What it writes, enable keeps last of every stack even where check would only warn.
        blocking = sorted((f for f in findings if (f.problem or f.kind == "order")
                           and f.kind in _BLOCKING and f.ours in changed),
                          key=lambda f: not f.problem)
        if blocking:
            more = f" (and {len(blocking) - 1} more)" if len(blocking) > 1 else ""
            first = str(blocking[0]).replace("warning: ", "", 1)
            raise Refused(f"refusing, as afterwards {first}{more}; nothing written")
        for finding in findings:
            if finding.kind == "twice" and finding.ours in changed:
                outcome.notes.append(str(finding).replace("warning: ", "", 1))
        outcome.changes = [Change(s, tree.path(s), before[s], final[s]) for s in requested]
        if not dry_run:
            # The backup keeps the version from before enable: a file that already has a line
            # of ours (new options) keeps the backup it has.
            _write(directory, outcome, originals,
                   {s for s in requested if not pamd.parse(before[s]).ours()})
    return outcome


def disable(services: Sequence[str], pam_dir: Path = DEFAULT_PAM_DIR,
            dry_run: bool = False) -> Outcome:
    """Removes every line of ours from each service's file: a file enabled by `enable` gets its
    original bytes back."""
    _check_pam_dir(pam_dir)
    if not dry_run:
        _require_write(pam_dir, "disable")
    requested = list(dict.fromkeys(services))
    outcome = Outcome()
    with pamd.PamDir(pam_dir, lock=not dry_run) as directory:
        originals = {service: _load(directory, service) for service in requested}
        before = {service: originals[service].text for service in requested}
        tree = PamTree(pam_dir, before)
        final = {s: pamd.without_session_line(before[s]) for s in requested}
        after = tree.with_overrides(final)
        was = {e.service for e in audit.enabled(tree)}
        still = {e.service: e.via for e in audit.enabled(after)}
        for service in requested:
            if service in still:
                outcome.notes.append(f"{service}: still runs pam_unshare.so through "
                                     f"{still[service]}")
        for service in sorted(was - set(still) - set(requested)):
            outcome.notes.append(f"{service}: no longer runs pam_unshare.so either (it "
                                 f"includes a file you disabled)")
        outcome.changes = [Change(s, tree.path(s), before[s], final[s]) for s in requested]
        if not dry_run:
            # No backup: the one enable saved is the version from before enable, and stays.
            _write(directory, outcome, originals, set())
    return outcome


def _write(directory: pamd.PamDir, outcome: Outcome, originals: Dict[str, pamd.Original],
           backup: Set[str]) -> None:
    """Every changed file, or none (pamd.PamDir.apply puts back what it wrote on a failure)."""
    edits = [pamd.Edit(change.service, originals[change.service], change.after,
                       change.service in backup)
             for change in outcome.changes if change.changed]
    outcome.backups.update(directory.apply(edits))
