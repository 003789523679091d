"""Enabling and disabling the module for PAM services: validate everything, plan every file's new
text, refuse a plan that could lock anyone out, then write (through pamd) under one lock.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Sequence, Set

from pam_unshare import audit, options, pamd, paths, system
from pam_unshare.errors import Failed, NeedsRoot, Refused
from pam_unshare.stacks import PamTree, StackError, is_service_name, vendor_dir_for

DEFAULT_PAM_DIR = Path("/etc/pam.d")
# "auto": the vendor directory that goes with the PAM directory (stacks.vendor_dir_for).
VendorDir = Path | None | Literal["auto"]
# What a refusal of ours must keep from breaking: findings of these kinds about a line we add.
_BLOCKING = ("order", "module", "stack", "caller")


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
    resolved = paths.resolve_module(module)
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


class _Vendor:
    """The vendor directory, opened (and judged) only when a service needs it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._directory: pamd.PamDir | None = None

    def read(self, service: str) -> pamd.Original | None:
        """SERVICE's vendor file, or None. Refuses a symlink or a file that does not parse: it
        would become the content of a file root writes."""
        if self.path is None or not self.path.is_dir():
            return None
        if self._directory is None:
            self._directory = pamd.PamDir(self.path, lock=False)
        try:
            found = self._directory.read(service)
        except Refused:
            raise Refused(f"{self.path / service} is a symbolic link or not a regular file; "
                          f"pam-unshare copies only regular vendor files; nothing written") \
                from None
        if found is None:
            return None
        _parses(self.path / service, found.text)
        return dataclasses.replace(found, vendor=True)

    def close(self) -> None:
        if self._directory is not None:
            self._directory.__exit__()
            self._directory = None


def _parses(path: Path, text: str) -> None:
    try:
        pamd.parse(text)
    except pamd.ParseError as error:
        raise Refused(f"{path} does not parse ({error}); refusing to edit it, nothing "
                      f"written") from None


def _load(directory: pamd.PamDir, service: str, vendor: _Vendor | None = None,
          ) -> pamd.Original:
    """SERVICE's file in DIRECTORY, or (with VENDOR, when DIRECTORY has none) its vendor file."""
    if not is_service_name(service):
        raise Refused(f'"{service}" is not a PAM service name; nothing written')
    path = directory.path / service
    original = directory.read(service)
    if original is None and vendor is not None:
        original = vendor.read(service)
        if original is not None:
            return original
    if original is None:
        if vendor is not None and vendor.path is not None:
            missing = f"neither {path} nor {vendor.path / service} exists"
        else:
            missing = f"{path} does not exist"
        raise Refused(f"unknown service {service}: {missing}; nothing written")
    _parses(path, original.text)
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


def _vendor_path(pam_dir: Path, vendor_dir: VendorDir) -> Path | None:
    return vendor_dir_for(pam_dir) if vendor_dir == "auto" else vendor_dir


def enable(services: Sequence[str], arguments: Sequence[str] = (),
           module: str = pamd.MODULE_TOKEN, pam_dir: Path = DEFAULT_PAM_DIR,
           dry_run: bool = False, vendor_dir: VendorDir = "auto") -> Outcome:
    """Adds `session required MODULE ARGUMENTS` to each service's file, after its other session
    lines and includes, or updates the line that is there. A service that only has a vendor
    file (VENDOR_DIR/NAME, which PAM reads when PAM_DIR has no NAME) gets PAM_DIR/NAME: the
    vendor text plus our line, and NAME.pam-unshare.vendor next to it, the vendor text it was
    made from (what lets disable remove it again). Refuses (errors.Refused, nothing written) an
    invalid option, an unknown service, a file that does not parse, a module PAM could not load
    or someone else controls, a host where sessions cannot get their namespaces (with
    onerr=fail), or a change that puts our line before another session module of any stack.
    Writes every file or none."""
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
    vendor = _Vendor(_vendor_path(pam_dir, vendor_dir))
    with pamd.PamDir(pam_dir, lock=not dry_run) as directory:
        try:
            originals = {service: _load(directory, service, vendor) for service in requested}
        finally:
            vendor.close()
        before = {service: originals[service].text for service in requested}
        tree = PamTree(pam_dir, before, vendor.path)
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
        copies = _vendor_copies(directory, outcome, originals, vendor.path)
        if not dry_run:
            # The backup keeps the version from before enable: a file that already has a line
            # of ours (new options) keeps the backup it has.
            _write(directory, outcome, originals,
                   {s for s in requested if not pamd.parse(before[s]).ours()}, copies)
    return outcome


def _vendor_copies(directory: pamd.PamDir, outcome: Outcome,
                   originals: Dict[str, pamd.Original], vendor: Path | None) -> List[pamd.Edit]:
    """For each change of a vendor file: the record of the vendor text it is made from (the
    change itself creates DIRECTORY/NAME, as the service has no file there yet)."""
    edits = []
    for change in outcome.changes:
        original = originals[change.service]
        if not change.changed or change.service in outcome.skipped or not original.vendor:
            continue
        record = change.service + pamd.VENDOR_SUFFIX
        edits.append(pamd.Edit(record, directory.read(record), original.text, False))
        outcome.notes.append(f"{change.service}: {directory.path / change.service} is new, "
                             f"made from the vendor file {vendor and vendor / change.service} "
                             f"(which PAM reads as long as {directory.path} has no file of "
                             f"that name); `pam-unshare disable {change.service}` removes it "
                             f"again")
    return edits



def disable(services: Sequence[str], pam_dir: Path = DEFAULT_PAM_DIR,
            dry_run: bool = False, vendor_dir: VendorDir = "auto") -> Outcome:
    """Removes every line of ours from each service's file: a file enabled by `enable` gets its
    original bytes back. A file enable made from a vendor file is removed again when it holds
    exactly that vendor text plus our line and the vendor file is still that text (PAM reads
    the vendor file again); otherwise only our line goes, with a note."""
    _check_pam_dir(pam_dir)
    if not dry_run:
        _require_write(pam_dir, "disable")
    requested = list(dict.fromkeys(services))
    outcome = Outcome()
    vendor = _Vendor(_vendor_path(pam_dir, vendor_dir))
    with pamd.PamDir(pam_dir, lock=not dry_run) as directory:
        try:
            originals = {service: _load(directory, service, vendor) for service in requested}
            before = {service: originals[service].text for service in requested}
            final = {s: pamd.without_session_line(before[s]) for s in requested}
            for service in requested:
                if originals[service].vendor and final[service] != before[service]:
                    raise Refused(f"{service}: pam_unshare.so is in the vendor file "
                                  f"{vendor.path and vendor.path / service}, which pam-unshare "
                                  f"does not edit (the package that owns it does); nothing "
                                  f"written")
            removals = _vendor_removals(directory, vendor, originals, final, outcome)
        finally:
            vendor.close()
        tree = PamTree(pam_dir, before, vendor.path)
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
            _write(directory, outcome, originals, set(), removals)
    return outcome


def _vendor_removals(directory: pamd.PamDir, vendor: _Vendor,
                     originals: Dict[str, pamd.Original], final: Dict[str, str],
                     outcome: Outcome) -> List[pamd.Edit]:
    """For each file enable made from a vendor file (it has a NAME.pam-unshare.vendor record):
    the record's removal, and the file's when it would hold exactly the recorded vendor text and
    the vendor file still is that text. Notes say why a file stays."""
    edits = []
    for service, original in originals.items():
        if original.vendor:
            continue
        record_name = service + pamd.VENDOR_SUFFIX
        record = directory.read(record_name)
        if record is None:
            continue
        edits.append(pamd.Edit(record_name, record, None, False))
        now = vendor.read(service)
        path = directory.path / service
        source = vendor.path and vendor.path / service
        if final[service] != record.text:
            outcome.notes.append(f"{service}: {path} was made from the vendor file by enable "
                                 f"and has changed since (not only our line): kept, without "
                                 f"our line")
        elif now is None or now.data != record.data:
            state = "is gone" if now is None else "has changed"
            outcome.notes.append(f"{service}: the vendor file {source} "
                                 f"{state} since enable made {path} from it: kept {path}, "
                                 f"without our line (a copy of the old vendor file); remove it "
                                 f"to use the vendor file")
        else:
            edits.append(pamd.Edit(service, original, None, False))
            outcome.notes.append(f"{service}: {path} goes, as enable had made it from the "
                                 f"vendor file {source}: PAM reads that file again")
    return edits


def _write(directory: pamd.PamDir, outcome: Outcome, originals: Dict[str, pamd.Original],
           backup: Set[str], extra: Sequence[pamd.Edit] = ()) -> None:
    """Every changed file and EXTRA, or none (pamd.PamDir.apply puts back what it wrote on a
    failure). A removal in EXTRA replaces the change of the same file."""
    replaced = {edit.name for edit in extra}
    edits = [pamd.Edit(change.service,
                       None if originals[change.service].vendor else originals[change.service],
                       change.after, change.service in backup)
             for change in outcome.changes
             if change.changed and change.service not in outcome.skipped
             and change.service not in replaced]
    outcome.backups.update(directory.apply([*edits, *extra]))
