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
from extrapos.cli import bench, dialogue, evaluate, hf, info, lm_eval, probes, train, translate
from extrapos.core.errors import UserError

#: command groups, in the order `extrapos --help` lists them
COMMAND_MODULES = (info, train, evaluate, bench, hf, probes, translate, dialogue, lm_eval)


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


#: options where an empty string is a meaningful value
_EMPTY_ALLOWED = {"prompt"}


def _empty_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first option or argument given as an empty (or blank) string, as its flag."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if dest not in _EMPTY_ALLOWED and any(isinstance(v, str) and not v.strip() for v in values):
            return _flag_of(parser, args, dest)
    return None


def _flag_of(parser: argparse.ArgumentParser, args: argparse.Namespace, dest: str) -> str:
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.dest == dest:
                return action.option_strings[0] if action.option_strings else action.dest
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return dest


def _not_utf8_argument(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first option or argument that is not valid UTF-8 (bytes the OS handed over as lone
    surrogates), as 'FLAG (VALUE)'; a prompt or file name like that cannot be tokenized,
    printed or written into JSON."""
    for dest, value in vars(args).items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    shown = v.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                    return f"{_flag_of(parser, args, dest)} ({shown})"
    return None


def _tolerant_output() -> None:
    """Text the terminal's encoding cannot show is printed as backslash escapes (e.g. \\u20ac
    under LANG=C or PYTHONIOENCODING=ascii) instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper, or closed
            pass


def _stdout_closed() -> int:
    """The reader of stdout went away (`extrapos list | head -1`): stop quietly with the
    shell's code for SIGPIPE (128 + 13). Later writes and the exit-time flush go to /dev/null,
    so Python prints no 'Exception ignored' message."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout has no descriptor (captured)
        pass
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command: 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C
    (one line, wherever it lands: parsing, plugins, imports or the command), 141 when the
    reader of stdout closed it."""
    _tolerant_output()
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return code
    except KeyboardInterrupt:
        print("extrapos: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


def _run(argv: Sequence[str] | None) -> int:
    from extrapos.core.provenance import record_invocation

    record_invocation(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    from extrapos.core.plugins import load_plugins, plugin_errors

    load_plugins()
    if plugin_errors():
        print(f"extrapos: error: {plugin_errors()[0]}", file=sys.stderr)
        return 2
    empty = _empty_argument(parser, args)
    if empty:  # '' as a path would mean the current folder
        print(
            f"extrapos: error: argument {empty}: empty value; give a non-empty value",
            file=sys.stderr,
        )
        return 2
    not_utf8 = _not_utf8_argument(parser, args)
    if not_utf8:
        print(
            f"extrapos: error: argument {not_utf8} is not valid UTF-8; extrapos takes UTF-8 "
            "text and file names (rename the file, or re-encode the text)",
            file=sys.stderr,
        )
        return 2
    try:
        args.fn(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"extrapos: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
