"""The `extrapos` command. Bad input prints one line on stderr and exits 2 (`--debug` shows the
traceback).

One module per command group; each has `register(sub)` adding its subcommands. Building the
parser imports no torch (handlers import what they need), so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from extrapos import __version__
from extrapos.cli import bench, evaluate, hf, info, lm_eval, probes, train
from extrapos.core.errors import UserError

#: command groups, in the order `extrapos --help` lists them
COMMAND_MODULES = (info, train, evaluate, bench, hf, probes, lm_eval)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what is wrong and where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="extrapos",
        description="Positional encodings that extrapolate: train short, test long.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"extrapos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.fn(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"extrapos: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("extrapos: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
