"""The pam-unshare command line: arguments and output only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, List

from pam_unshare import (
    __version__,
    audit,
    dbuspolicy,
    demo,
    install,
    paths,
    render,
    services,
    sessions,
    status,
    usermanager,
    verify,
)
from pam_unshare.errors import Failed, Refused
from pam_unshare.stacks import PamTree

EPILOG = """examples:
  pam-unshare install                     copy the module next to pam_unix.so (root)
  pam-unshare enable su sudo sshd --dry-run
                                          show what enabling would change, change nothing
  pam-unshare enable su sudo sudo-i sshd  isolate every su, sudo and ssh session (root)
  pam-unshare status                      module, services, kernel support, coverage
  pam-unshare sessions --tree             live sessions and their processes (root)
  pam-unshare enter 4026532187            a shell inside that session's namespaces (root)
  pam-unshare verify                      prove it: probe every channel from real sessions
  pam-unshare check                       validate every pam_unshare line; non-zero on problems
  pam-unshare disable su sudo sudo-i sshd undo enable, byte for byte (root)

exit status: 0 done, 1 failed or problems found, 2 refused (nothing was changed)
"""

PAM_DIR_HELP = ("the PAM configuration directory (default: /etc/pam.d); files it lacks are read "
                "from the vendor directory, /usr/lib/pam.d (ROOT/usr/lib/pam.d for ROOT/etc/pam.d)")


def _print_notes(notes: List[str]) -> None:
    for note in notes:
        print(f"pam-unshare: note: {note}", file=sys.stderr)


def _install(args: argparse.Namespace) -> int:
    result = install.install(args.dest)
    state = "installed" if result.changed else "already installed (identical copy)"
    print(f"{state}: {result.path} (pam-unshare {result.version}, sha256 "
          f"{result.sha256[:16]}, mode 0644)")
    if os.geteuid() != 0:
        print("pam-unshare: note: not running as root, so the copy is owned by you; PAM "
              "modules should be owned by root", file=sys.stderr)
    if args.dest is None or args.dbus_dir is not None:
        written, note = dbuspolicy.install(args.dbus_dir or dbuspolicy.ADMIN_DIR)
        if written:
            print(f"installed: {written} (D-Bus policy: no process lists of units for "
                  f"users over the system bus)")
        if note:
            _print_notes([note])
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    removed = install.uninstall(args.pam_dir, args.dest)
    print(f"removed {removed}" if removed else "not installed: nothing to remove")
    if args.dest is None or args.dbus_dir is not None:
        policy = dbuspolicy.uninstall(args.dbus_dir or dbuspolicy.ADMIN_DIR)
        if policy:
            print(f"removed {policy}")
    return 0


def _report(outcome: services.Outcome, dry_run: bool, done: str, unchanged: str) -> None:
    _print_notes(outcome.notes)
    for change in outcome.changes:
        if change.service in outcome.skipped:
            continue  # a note said why
        if dry_run:
            sys.stdout.write(render.diff(change))
            if not change.changed:
                print(f"pam-unshare: {change.service}: {unchanged}, no change", file=sys.stderr)
        elif change.changed:
            line = change.line
            at = f" line {line}" if line and done == "enabled" else ""
            backup = outcome.backups.get(change.service)
            print(f"{done} {change.service}: {change.path}{at}"
                  + (f" (previous version: {backup})" if backup else ""))
        else:
            print(f"{change.service}: {unchanged}, nothing changed")


def _split_user_manager(names: List[str]) -> tuple[List[str], bool]:
    """The PAM services among NAMES, and whether systemd-user (a unit drop-in, not a PAM line:
    see usermanager.py) is one of them."""
    return [n for n in names if n != usermanager.SERVICE], usermanager.SERVICE in names


def _report_dropin(change: usermanager.DropIn, dry_run: bool, done: str, unchanged: str) -> None:
    if dry_run:
        word = "would write" if change.after is not None else "would remove"
        print(f"{usermanager.SERVICE}: {word if change.changed else unchanged} {change.path}")
    elif change.changed:
        print(f"{done} {usermanager.SERVICE}: {change.path}")
    else:
        print(f"{usermanager.SERVICE}: {unchanged}, nothing changed")


def _enable(args: argparse.Namespace) -> int:
    pam_services, user_manager = _split_user_manager(args.services)
    if user_manager:
        # Everything the drop-in's write could refuse is refused before a PAM file changes.
        usermanager.check_writable(_unit_dir(args))
    if pam_services:
        outcome = services.enable(pam_services, args.option, args.module, args.pam_dir,
                                  args.dry_run)
        _report(outcome, args.dry_run, "enabled", "unchanged")
    if user_manager:
        if args.option and not pam_services:
            _print_notes([f"{usermanager.SERVICE}: module options do not apply to it (a unit "
                          f"drop-in, not a PAM line)"])
        try:
            change, note = usermanager.enable(_unit_dir(args), args.dry_run)
        except (Refused, Failed, OSError) as error:
            done = " (the PAM files above are enabled)" if pam_services and not args.dry_run \
                else ""
            raise Failed(f"{usermanager.SERVICE}: {error}{done}") from None
        _report_dropin(change, args.dry_run, "enabled", "unchanged")
        if note:
            _print_notes([note])
    return 0


def _disable(args: argparse.Namespace) -> int:
    pam_services, user_manager = _split_user_manager(args.services)
    if pam_services:
        outcome = services.disable(pam_services, args.pam_dir, args.dry_run)
        _report(outcome, args.dry_run, "disabled", "not enabled")
    if user_manager:
        change = usermanager.disable(_unit_dir(args), args.dry_run)
        _report_dropin(change, args.dry_run, "disabled", "not enabled")
    return 0


def _status(args: argparse.Namespace) -> int:
    if not args.pam_dir.is_dir():
        raise Refused(f"{args.pam_dir}: no such directory")
    facts = status.collect(args.pam_dir,
                           args.unit_dir or usermanager.unit_dir_for(args.pam_dir))
    if args.json:
        print(json.dumps(facts.as_dict(), indent=2))
    else:
        sys.stdout.write(render.status_text(facts))
    return 0


def _sessions(args: argparse.Namespace) -> int:
    sessions.require_root("sessions")
    found = sessions.list_sessions()
    if args.json:
        print(json.dumps([session.as_dict() for session in found], indent=2))
    elif not found:
        print("no live sessions")
    elif args.tree:
        print("\n".join(render.session_tree(session) for session in found), end="")
    else:
        sys.stdout.write(render.sessions_table(found))
    return 0


def _enter(args: argparse.Namespace) -> int:
    sessions.require_root("enter")
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        command = [os.environ.get("SHELL") or "/bin/sh"]
    session = sessions.find(sessions.list_sessions(), args.session)
    return sessions.enter(session, command)


def _check(args: argparse.Namespace) -> int:
    if not args.pam_dir.is_dir():
        raise Refused(f"{args.pam_dir}: no such directory")
    tree = PamTree(args.pam_dir)
    findings = audit.check(tree)
    for finding in findings:
        print(finding)
    problems = sum(finding.problem for finding in findings)
    if problems:
        return 1
    if not findings:
        where = ", ".join(entry.service for entry in audit.enabled(tree))
        print(f"ok: pam_unshare.so is enabled for {where}" if where
              else f"ok: no file in {args.pam_dir} uses pam_unshare.so")
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        report = verify.run(args.user, args.service)
    except verify.Interrupted as stop:
        print(f"pam-unshare: verify: stopped by {stop}; the foreign process and the throwaway "
              f"user are removed", file=sys.stderr)
        return 128 + stop.signum
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        sys.stdout.write(verify.format_report(report))
    return 0 if report.ok else 1


def _module_path(_args: argparse.Namespace) -> int:
    print(paths.module_path())
    return 0


def _demo(_args: argparse.Namespace) -> int:
    demo.require_root()
    return 0 if demo.run(sys.stdout).isolated else 1


def _command(commands: argparse._SubParsersAction, name: str, summary: str, examples: str,
             run: Callable[[argparse.Namespace], int],
             description: str | None = None) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary,
                                 description=textwrap.fill(description or summary, 79),
                                 epilog="examples:\n" + examples,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run)
    return parser


def _add_pam_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pam-dir", type=Path, default=services.DEFAULT_PAM_DIR,
                        metavar="DIR", help=PAM_DIR_HELP)


def _add_unit_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unit-dir", type=Path, default=None, metavar="DIR",
                        help="where systemd-user's unit drop-in goes (default: "
                        "/etc/systemd/system, or ROOT/etc/systemd/system for --pam-dir "
                        "ROOT/etc/pam.d)")


def _unit_dir(args: argparse.Namespace) -> Path:
    """--unit-dir, or the one that goes with --pam-dir; never the host's for a PAM directory
    that is not a system's etc/pam.d."""
    if args.unit_dir is not None:
        return args.unit_dir
    derived = usermanager.unit_dir_for(args.pam_dir)
    if derived is None:
        raise Refused(f"{args.pam_dir} is not an etc/pam.d, so there is no unit directory that "
                      f"goes with it: pass --unit-dir for {usermanager.SERVICE}; nothing written")
    return derived


def _add_module_commands(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "install", "copy the built module into the PAM module directory (root)",
        "  pam-unshare install                 next to pam_unix.so, e.g. in\n"
        "                                      /usr/lib/x86_64-linux-gnu/security\n"
        "  pam-unshare install --dest /tmp/m   somewhere else (then enable --module)\n",
        _install,
        "Copies the built pam_unshare.so into the directory PAM loads modules from (where "
        "pam_unix.so lives), mode 0644, owned by root, atomically (a temporary file in the same "
        "directory, then a rename). Needs root unless --dest is given.")
    parser.add_argument("--dest", type=Path, metavar="DIR",
                        help="install into DIR instead of the system's PAM module directory")
    parser.add_argument("--dbus-dir", type=Path, default=None, metavar="DIR",
                        help="where the D-Bus policy goes (default: /etc/dbus-1/system.d, "
                        "unless --dest is given)")
    parser = _command(
        commands, "uninstall", "remove the installed module unless PAM files use it (root)",
        "  pam-unshare disable su sudo sudo-i sshd && pam-unshare uninstall\n", _uninstall,
        "Removes the installed pam_unshare.so. Refused (exit status 2) while any file in the "
        "PAM directory still loads it: every session of that service would fail.")
    parser.add_argument("--dest", type=Path, metavar="DIR",
                        help="remove it from DIR instead of the system's PAM module directory")
    parser.add_argument("--dbus-dir", type=Path, default=None, metavar="DIR",
                        help="where the D-Bus policy goes (default: /etc/dbus-1/system.d, "
                        "unless --dest is given)")
    _add_pam_dir(parser)


def _add_config_commands(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "enable", "add the module to services' session stacks (root)",
        "  pam-unshare enable su sudo sudo-i sshd\n"
        "  pam-unshare enable sshd -o onerr=succeed -o exempt_groups=admins --dry-run\n"
        "  pam-unshare enable su --pam-dir /tmp/pam.d --module /opt/pu/pam_unshare.so\n",
        _enable,
        "Adds `session required pam_unshare.so OPTIONS` to each service's file, after every "
        "other session line and @include (pam_loginuid and pam_systemd need /proc/self first), "
        "or updates the one line already there. Nothing else in the file changes; writes are "
        "atomic, keep mode and owner, and save the previous version as FILE.pam-unshare.bak. "
        "Options are checked by the module's own parser first. A typo, an unknown service, a "
        "file that does not parse, a module PAM could not load, or a change that would put the "
        "module before another session module is refused with exit status 2 and nothing "
        "written. A service whose stack already runs the module through an include (su-l "
        "includes su) is skipped, with a note. systemd-user (the user manager, which PID 1 "
        "runs in the process that opened its session) gets no PAM line: enable writes a "
        "drop-in for user@.service that gives the manager and all it starts a /proc showing "
        "only the user's own processes.")
    parser.add_argument("services", nargs="+", metavar="SERVICE",
                        help="a file name in the PAM directory: su, su-l, sudo, sudo-i, sshd, ...")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a module option, e.g. onerr=succeed, exempt_groups=admins, debug "
                        "(repeatable; see the README's option table)")
    parser.add_argument("--module", default=services.pamd.MODULE_TOKEN, metavar="PATH",
                        help="the module path to write (default: pam_unshare.so, which PAM "
                        "finds in its module directory)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the change as a unified diff and write nothing")
    _add_pam_dir(parser)
    _add_unit_dir(parser)

    parser = _command(
        commands, "disable", "remove the module's line from services (root)",
        "  pam-unshare disable sshd\n  pam-unshare disable su sudo --dry-run\n", _disable,
        "Removes exactly the line enable added: the file gets its previous bytes back.")
    parser.add_argument("services", nargs="+", metavar="SERVICE")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the change as a unified diff and write nothing")
    _add_pam_dir(parser)
    _add_unit_dir(parser)

    parser = _command(
        commands, "check", "validate every pam_unshare line; non-zero exit on problems",
        "  pam-unshare check\n  pam-unshare check --pam-dir /srv/image/etc/pam.d\n", _check,
        "Validates every pam_unshare line: its options (with the module's own parser), that the "
        "module it names is there and loads, and that it runs after every other session module "
        "(pam_loginuid, pam_systemd, ...) in each stack that reaches it. Prints one line per "
        "problem and exits with status 1 if there is any; warnings do not change the status.")
    _add_pam_dir(parser)


def _add_observe_commands(commands: argparse._SubParsersAction) -> None:
    parser = _command(
        commands, "status", "module, enabled services, kernel support and coverage",
        "  pam-unshare status\n  pam-unshare status --json | jq .uncovered\n", _status,
        "Shows whether the module is installed (and whether the installed copy is the built "
        "one), which services run it and with which options, whether the kernel supports it "
        "(the namespace probe needs root), and the services on this host that open user "
        "sessions without it: each is a way around the isolation.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    _add_pam_dir(parser)
    _add_unit_dir(parser)

    parser = _command(
        commands, "sessions", "list live namespaced sessions (root)",
        "  pam-unshare sessions\n  pam-unshare sessions --tree\n  pam-unshare sessions --json\n",
        _sessions,
        "Lists the live sessions: id (the session's PID namespace), host PID of its PID 1, "
        "user, service (guessed from the process that opened it; unknown once it is gone), "
        "start time and number of processes.")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--tree", action="store_true", help="show each session's processes")

    parser = _command(
        commands, "enter", "run a command inside a session's namespaces (root)",
        "  pam-unshare enter 4026532187                 a shell ($SHELL) in that session\n"
        "  pam-unshare enter 12345 -- ps -e -o pid,args   what the session sees\n",
        _enter,
        "Runs COMMAND (default: $SHELL, or /bin/sh) as root inside the PID and mount namespaces "
        "of a session, where ps and /proc show that session's processes. The session's user "
        "can see the command too.")
    parser.add_argument("session", metavar="SESSION",
                        help="an id from `pam-unshare sessions`, or the host PID of the "
                        "session's PID 1")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the command and its arguments")

    parser = _command(
        commands, "verify", "prove the isolation from real sessions, channel by channel (root)",
        "  pam-unshare verify                          every service that runs the module\n"
        "  pam-unshare verify --service su sudo --json two services, as JSON\n"
        "  pam-unshare verify --user alice             sessions of alice, not a throwaway user\n",
        _verify,
        "Starts a process as nobody with a secret word on its command line (in a systemd scope "
        "when systemd is PID 1), then opens a real PAM session through each service that runs "
        "the module (or each --service) and looks for that process from inside, as the user, "
        "through every channel: ps, /proc, other procfs mounts, cgroup.procs, kill -0, "
        "systemctl status, loginctl, systemd's GetUnitProcesses and systemd-run --user. Root, "
        "outside any session, runs the same probes as the control and must see the process. "
        "Prints the matrix channel x service (closed, OPEN, n/a) with the evidence of each "
        "OPEN; exit status 1 if any channel is open or a service could not be verified. The "
        "user is a throwaway system account (useradd, removed afterwards) unless --user is "
        "given. Leaves no process, user or unit behind, also when interrupted.")
    parser.add_argument("--user", metavar="USER",
                        help="open the sessions as USER (an existing ordinary account) instead "
                        "of a throwaway user")
    parser.add_argument("--service", action="extend", nargs="+", default=[], metavar="SERVICE",
                        help="verify these PAM services (repeatable; default: every service "
                        "whose session stack runs pam_unshare.so)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pam-unshare",
        description="Put every su, sudo and ssh login in its own PID namespace and /proc.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_module_commands(commands)
    _add_config_commands(commands)
    _add_observe_commands(commands)
    _command(commands, "module-path", "print the absolute path of the built module",
             "  pam-unshare module-path\n", _module_path)
    _command(commands, "demo", "show isolation in a sandbox, host files untouched (root)",
             "  sudo pam-unshare demo\n", _demo,
             "Shows, side by side, what ps -e shows on the host and inside a su session, in a "
             "private mount namespace on throwaway copies of /etc/pam.d and the account files: "
             "the host's PAM configuration is never touched.")
    return parser


def _describe(error: OSError) -> str:
    text = error.strerror or str(error)
    if error.filename is not None:
        text = f"{error.filename}: {text}"
    if isinstance(error, PermissionError) and os.geteuid() != 0:
        text += " (run it as root)"
    return text


def main(argv: List[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (Refused, Failed) as error:
        print(f"pam-unshare: {error}", file=sys.stderr)
        return error.exit_status
    except BrokenPipeError:  # e.g. `pam-unshare status | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        print(f"pam-unshare: {_describe(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - one line, never a traceback
        print(f"pam-unshare: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
