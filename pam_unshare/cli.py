"""The pam-unshare command line: arguments and output only."""

from __future__ import annotations

import argparse
import sys
from typing import List

from pam_unshare import __version__, demo, paths

EPILOG = """examples:
  pam-unshare module-path     print where the built pam_unshare.so is
  pam-unshare demo            show, in a sandbox, what ps -e shows on the host and in a su session
"""


def _module_path(_args: argparse.Namespace) -> int:
    print(paths.module_path())
    return 0


def _demo(_args: argparse.Namespace) -> int:
    demo.require_root()
    return 0 if demo.run(sys.stdout).isolated else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pam-unshare",
        description="Put every su, sudo and ssh login in its own PID namespace and /proc.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("module-path", help="print the absolute path of the built module",
                        epilog="example: pam-unshare module-path"
                        ).set_defaults(run=_module_path)
    commands.add_parser(
        "demo",
        help="show isolation in a sandbox; the host's PAM files are not touched (root)",
        epilog="example: sudo pam-unshare demo",
    ).set_defaults(run=_demo)
    return parser


def main(argv: List[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, PermissionError) as error:
        print(f"pam-unshare: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
