"""Argument types and helpers shared by the command modules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from extrapos.core.settings import field_default


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def length_list(text: str) -> list[int]:
    """Comma-separated lengths (or sizes, distances): integers >= 1."""
    values = int_list(text)
    bad = [v for v in values if v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"lengths must be >= 1, got {bad[0]} in '{text}'")
    return values


def name_list(text: str) -> list[str]:
    """Comma-separated names, each at most once; 'none' (or nothing) is the empty list."""
    if text.strip().lower() in ("", "none"):
        return []
    names = [x.strip() for x in text.split(",") if x.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"'{twice[0]}' is listed twice in '{text}'")
    return names


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def write_results(
    out: str | None, csv_path: str | None, payload: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    """--out FILE.json (the payload) or FILE.csv (the records, one row each); --csv FILE.csv."""
    from extrapos.core.files import write_json
    from extrapos.probes.perplexity import write_records_csv

    for path, as_csv in ((out, out is not None and out.endswith(".csv")), (csv_path, True)):
        if path:
            if as_csv:
                write_records_csv(path, records)
            else:
                write_json(path, payload)
            print(f"wrote {path}")


def table(rows: list[str], cols: list[Any], cell: Callable[[str, Any], str], corner: str) -> None:
    """Print a rows x lengths table of cell(row, col) strings."""
    width = max(12, *(len(r) for r in rows))
    cells = {(r, c): cell(r, c) for r in rows for c in cols}
    col_w = max(9, *(len(v) for v in cells.values()), *(len(str(c)) + 2 for c in cols))
    print(f"{corner:<{width}} " + " ".join(f"{'L=' + str(c):>{col_w}}" for c in cols))
    for r in rows:
        print(f"{r:<{width}} " + " ".join(f"{cells[(r, c)]:>{col_w}}" for c in cols))


def run_corpus(run_dir: Path, data: str | None) -> Any:
    from extrapos.data import load_corpus
    from extrapos.training.run_dir import load_config

    if data is not None:
        return load_corpus(data)
    recorded = load_config(run_dir).get("data", {})
    name = recorded.get("name")
    corpus = load_corpus(None if name in (None, "builtin") else name)
    if recorded.get("content_hash") not in (None, corpus.content_hash):
        print(
            f"warning: the corpus at {name} changed since training (hash differs)",
            file=sys.stderr,
        )
    return corpus


def print_perplexities(records: list[dict[str, Any]]) -> None:
    """One line per evaluated length (or the reason a length could not be evaluated)."""
    for r in records:
        if r.get("ppl") is None:
            print(f"L={r['length']:>6}: n/a ({r['error']})")
            continue
        bpb = r["bits_per_byte"]
        bpb_text = "n/a" if bpb is None else f"{bpb:.4f}"
        print(
            f"L={r['length']:>6}: ppl {r['ppl']:.4f}  bits/byte {bpb_text}  "
            f"({r['tokens']:,} tokens scored, {r['windows']} windows)"
        )


def quiet_transformers() -> None:
    """No per-file progress bars or load reports from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


#: RoPE extensions selectable on eval/generate (extrapos.probes.extensions.EXTENSIONS; kept here so that
#: building the parser imports no torch)
EXTENSION_NAMES = ("linear", "ntk", "dynamic", "yarn", "llama3", "rerope", "self_extend", "logn")


def add_command(
    sub: argparse._SubParsersAction, name: str, fn: Callable[[argparse.Namespace], None], help: str
) -> argparse.ArgumentParser:
    """A subcommand whose handler is `fn` (run by `extrapos.cli.main`)."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(fn=fn)
    return p


def _flag_type(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field annotation: Literal -> choices, bool -> --x/--no-x, lists
    -> comma-separated, dict -> JSON, Optional[T] -> T."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [p for p in params if p is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else {}
    if origin is typing.Literal:
        return {"choices": params}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        item = params[0] if params else str
        return {"type": {int: int_list, float: float_list}.get(item, name_list)}
    if origin is dict or hint is dict:
        return {"type": json_object, "metavar": "JSON"}
    if hint in (int, float, str):
        return {"type": hint}
    return {}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "none"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def add_dataclass_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    section: str,
    names: Sequence[str] | None = None,
    defaults: Callable[[str], str] | None = None,
) -> None:
    """One flag per field of dataclass `cls` (those in `names`, default all), stored as
    `args.<section>.<field>` with default None so unset flags can be told apart; the help is the
    field's `setting` help plus its true default (or `defaults(name)` when given)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in names or list(by_name):
        f = by_name[name]
        flag = f.metadata.get("flag") or name.replace("_", "-")
        note = defaults(name) if defaults else f"default {_show(field_default(f))}"
        help_text = f"{f.metadata.get('help', '')} ({note})".strip()
        kwargs = _flag_type(hints[name])
        if "type" in kwargs:
            kwargs.setdefault("metavar", name.upper())
        parser.add_argument(
            f"--{flag}",
            dest=f"{section}.{name}",
            default=None,
            help=help_text.replace("%", "%%"),
            **kwargs,
        )


def dataclass_flags(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The flags of `section` given on the command line, as {field: value}."""
    prefix = f"{section}."
    return {
        k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None
    }
