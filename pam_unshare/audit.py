"""Judging a PAM configuration: where the module runs and with which options, what is wrong with
our lines (`check`), and which session-opening services go around the isolation (coverage).
Read-only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

from pam_unshare import options, pamd, paths, system
from pam_unshare.stacks import Entry, PamTree, StackError

# Session modules that need the caller's /proc/self, which it loses once pam_unshare has run.
NEEDS_PROC_SELF = ("pam_loginuid.so", "pam_systemd.so", "pam_selinux.so", "pam_apparmor.so",
                   "pam_namespace.so", "pam_sepermit.so", "pam_systemd_home.so",
                   "pam_ck_connector.so")

# Services whose sessions PID 1 opens in the very process that then execs the program: the module
# can only refuse them (csrc/module.c), so a stack of theirs must not reach it.
CALLER_EXECS: Dict[str, str] = {"systemd-user": "the user manager",
                                "systemd-run0": "run0's command"}

# PAM services that start user processes in the session they open: each one that does not run
# the module starts processes that see the host's PID namespace and /proc.
SESSION_SERVICES: Dict[str, str] = {
    "login": "console and serial logins",
    "sshd": "ssh logins",
    "su": "su", "su-l": "su -",
    "sudo": "sudo", "sudo-i": "sudo -i",
    "runuser": "runuser (root starting commands as a user)", "runuser-l": "runuser -l",
    "cron": "cron jobs",
    "atd": "at and batch jobs",
    "systemd-user": "systemd --user and the user's services",
    "systemd-run0": "run0 (systemd 256 and later)",
    "remote": "telnet and rlogin logins", "rlogin": "rlogin logins", "rsh": "rsh commands",
    "xrdp-sesman": "remote desktop sessions",
    "cockpit": "Cockpit web console sessions",
    "xdm": "graphical logins", "kdm": "graphical logins",
}
SESSION_SERVICE_PREFIXES: Dict[str, str] = {
    "gdm-": "graphical logins (GDM)", "lightdm": "graphical logins (LightDM)",
    "sddm": "graphical logins (SDDM)",
}
_JUMP = re.compile(r"([a-z_]+)\s*=\s*(\d+)")


@dataclass(frozen=True)
class Finding:
    problem: bool  # False: a warning, which does not make `check` fail
    where: str
    message: str
    kind: str  # options, module, order, parse, stack, control, twice, bypass
    ours: str = ""  # the file holding the line of ours the finding is about

    def __str__(self) -> str:
        return f"{'' if self.problem else 'warning: '}{self.where}: {self.message}"


@dataclass(frozen=True)
class Enabled:
    service: str
    file: str  # the file that holds the line of ours the service reaches first
    line: int
    module: str
    args: Tuple[str, ...]

    @property
    def via(self) -> str | None:
        """The included file that runs the module for this service, if not its own file."""
        return None if self.file == self.service else self.file


@dataclass(frozen=True)
class Uncovered:
    service: str
    what: str
    why: str


def _mentions_module(text: str | None) -> bool:
    return bool(text) and any(pamd.MODULE_TOKEN in line.split("#", 1)[0]
                              for line in text.splitlines())


def _module_findings(tree: PamTree, name: str, rule: pamd.Rule,
                     cache: Dict[str, system.ModuleProblem | None]) -> List[Finding]:
    where = f"{tree.path(name)}:{rule.number}"
    found = []
    parsed, rejections = options.parse(rule.args)
    for rejection in rejections:
        found.append(Finding(True, where, f'option "{rejection.argument}": {rejection.reason} '
                             f"(the module ignores it and keeps its safe default)",
                             "options", name))
    for group in options.unresolved_groups(parsed):
        found.append(Finding(True, where, f'group "{group}" does not exist (in only_groups it '
                             f"refuses every session under onerr=fail; in exempt_groups it "
                             f"exempts nobody)", "options", name))
    resolved = paths.resolve_module(rule.module)
    problem = None
    if resolved is None:
        reason: str | None = (f"{rule.module} cannot be found: no PAM module directory (no "
                              f"{paths.REFERENCE_MODULE} found)")
    else:
        if str(resolved) not in cache:
            cache[str(resolved)] = system.module_problem(resolved)
        problem = cache[str(resolved)]
        reason = str(problem) if problem else None
    if problem and problem.unsafe:
        found.append(Finding(True, where, f"{reason}: PAM runs whatever is at {resolved} as "
                             f"root in every session of {name}", "module", name))
    elif reason and rule.silent:
        found.append(Finding(True, where, f"{reason}: PAM skips this \"-session\" line and "
                             f"{name}'s sessions run without isolation", "module", name))
    elif reason:
        hint = "" if rule.module.startswith("/") else " (run `pam-unshare install`)"
        found.append(Finding(True, where, f"{reason}: every session of {name} fails{hint}",
                             "module", name))
    elif rule.silent:
        found.append(Finding(False, where, 'leading "-": should the module go missing, PAM '
                             "skips the line silently and sessions run without isolation",
                             "control", name))
    if rule.control.lower() not in ("required", "requisite"):
        found.append(Finding(False, where, f'control "{rule.control}": when the module fails, '
                             f"the session may run without isolation; use required",
                             "control", name))
    return found


def _jump_skips(entries: List[Entry], start: int, target: int) -> int | None:
    """The largest jump of ENTRIES[START] if one skips ENTRIES[TARGET] (jumps count modules of
    the same substack only), else None."""
    rule = entries[start].rule
    if not rule.control.startswith("["):
        return None
    jumps = [int(count) for _, count in _JUMP.findall(rule.control.lower())]
    if not jumps:
        return None
    depth = entries[start].depth
    same = [i for i in range(start + 1, len(entries)) if entries[i].depth == depth]
    longest = max(jumps)
    return longest if target in same[:longest] else None


def _stack_findings(tree: PamTree, service: str, stack: List[Entry]) -> List[Finding]:
    ours = [i for i, entry in enumerate(stack) if entry.rule.is_ours]
    if not ours:
        return []
    where = str(tree.path(service))
    first = stack[ours[0]]
    found = []
    if service in CALLER_EXECS:
        found.append(Finding(True, where, f"reaches pam_unshare.so ({first.where}), which "
                             f"refuses every non-exempt session of it: PID 1 runs "
                             f"{CALLER_EXECS[service]} in the process that opened the session, "
                             f"which no namespace can take in; keep the module out of this "
                             f"stack (`pam-unshare enable systemd-user` covers the user manager "
                             f"with a unit drop-in)", "caller", first.file))
    later = [entry for entry in stack[ours[0] + 1:] if not entry.rule.is_ours]
    if later:
        shown = ", ".join(f"{e.module_name} ({e.where})" for e in later[:4])
        if len(later) > 4:
            shown += f" and {len(later) - 4} more"
        needy = sorted({e.module_name for e in later if e.module_name in NEEDS_PROC_SELF
                        and (e.module_name != "pam_selinux.so" or system.selinux_enabled())})
        why = (f" ({', '.join(needy)} need{'s' * (len(needy) == 1)} /proc/self, which the "
               f"caller no longer has)" if needy else
               " (none of them needs /proc/self here: they run inside the session)")
        # Only a module that needs /proc/self breaks: Debian's sshd runs pam_motd, pam_limits,
        # pam_env and pam_selinux (a no-op without SELinux) after common-session, where the
        # packaged profile puts the module. `enable` still refuses to write such a placement.
        found.append(Finding(bool(needy), where, f"{shown} run{'s' * (len(later) == 1)} after "
                             f"pam_unshare.so ({first.where}){why}; it "
                             f"{'must' if needy else 'should'} be the last session module",
                             "order", first.file))
    if len(ours) > 1:
        fix = (f"`pam-unshare disable {service}` removes its own line"
               if any(stack[i].file == service for i in ours) else "keep one of them")
        found.append(Finding(False, where, f"reaches pam_unshare.so {len(ours)} times ("
                             f"{', '.join(stack[i].where for i in ours)}); all but the first "
                             f"are no-ops: {fix}", "twice", first.file))
    for index, entry in enumerate(stack[:ours[0]]):
        if entry.depth > first.depth:
            continue  # "done" and jumps end inside their substack
        control = entry.rule.control.lower()
        if control == "sufficient" or "=done" in control.replace(" ", ""):
            found.append(Finding(False, where, f"{entry.module_name} ({entry.where}) can end "
                                 f'the session stack ("{entry.rule.control}") before '
                                 f"pam_unshare.so runs", "bypass", first.file))
        jump = _jump_skips(stack, index, ours[0])
        if jump is not None:
            found.append(Finding(False, where, f"{entry.module_name} ({entry.where}) can jump "
                                 f"over pam_unshare.so ({entry.rule.control})", "bypass",
                                 first.file))
    return found


def check(tree: PamTree) -> List[Finding]:
    """Everything wrong with the lines of ours in TREE: their options (judged by the module's own
    parser), the module they load, and their place in every stack that reaches them."""
    findings: List[Finding] = []
    cache: Dict[str, system.ModuleProblem | None] = {}
    services = tree.services()
    for name in services:
        try:
            pam = tree.parsed(name)
        except pamd.ParseError as error:
            if _mentions_module(tree.text(name)):
                findings.append(Finding(True, str(tree.path(name)), f"does not parse ({error}); "
                                        f"PAM may not load it as intended", "parse", name))
            continue
        except FileNotFoundError:
            continue
        for rule in pam.ours():
            findings += _module_findings(tree, name, rule, cache)
    for service in services:
        try:
            stack = tree.session_stack(service)
        except StackError as error:
            if _mentions_module(tree.text(service)):
                findings.append(Finding(True, str(tree.path(service)), f"its session stack does "
                                        f"not load: {error}", "stack", service))
            continue
        findings += _stack_findings(tree, service, stack)
    return findings


def enabled(tree: PamTree) -> List[Enabled]:
    """The services whose session stack runs the module, each with the first line of ours it
    reaches (in its own file, or in an included one)."""
    found = []
    for service in tree.services():
        if service in CALLER_EXECS:
            continue  # reaching the module there refuses, never isolates: a problem of check's
        try:
            stack = tree.session_stack(service)
        except StackError:
            try:
                stack = [Entry(service, rule, 0) for rule in tree.parsed(service).ours()]
            except (FileNotFoundError, pamd.ParseError):
                continue
        ours = [entry for entry in stack if entry.rule.is_ours]
        own = [entry for entry in ours if entry.file == service]
        entry = (own or ours or [None])[0]
        if entry is not None:
            found.append(Enabled(service, entry.file, entry.rule.number, entry.rule.module,
                                 entry.rule.args))
    return found


def _session_service(name: str) -> str | None:
    if name in SESSION_SERVICES:
        return SESSION_SERVICES[name]
    for prefix, what in SESSION_SERVICE_PREFIXES.items():
        if name.startswith(prefix):
            return what
    return None


def coverage(tree: PamTree) -> List[Uncovered]:
    """The services on this host that open sessions for users and do not run the module: each a
    way to start processes that see the host's PID namespace and /proc."""
    found = []
    for name in tree.services():
        what = _session_service(name)
        if what is None:
            continue
        try:
            stack = tree.session_stack(name)
        except StackError as error:
            found.append(Uncovered(name, what, f"its session stack does not load: {error}"))
            continue
        if not any(entry.rule.is_ours for entry in stack):
            found.append(Uncovered(name, what, "does not run pam_unshare.so"))
    return found
