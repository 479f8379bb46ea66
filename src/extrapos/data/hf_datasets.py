"""Corpora from Hugging Face `datasets`, loaded by the `datasets` library itself.

    hf:NAME[:CONFIG][#COLUMN]      a dataset on the hub (or in the local `datasets` cache)
    hf:PATH[#COLUMN]               a folder written by `Dataset(Dict).save_to_disk`

Examples: `hf:wikitext:wikitext-103-raw-v1`, `hf:Salesforce/wikitext:wikitext-2-raw-v1`,
`hf:deepmind/pg19`, `hf:./my_saved_dataset#content`.

Splits: train from `train`; valid from `validation`, `valid`, `val` or `dev`; test from `test`.
The text column is COLUMN, else `text`, else the only string column.

Rows become documents, kept whole, in dataset order — except for datasets whose rows are *lines*
(no row has a newline before its last character, as in WikiText): then a split's rows are one
document, each row ending in one newline (rows without one get it, so WikiText's empty rows
become its blank lines). A missing valid or test split is carved from train like a folder of
documents (by the hash of each row's name `train[i]`) or, for line datasets, like a text file
(90/5/5 at line boundaries).

Needs `pip install 'extrapos[hf]'`. Downloads go to the `datasets` cache (`HF_HOME`); the text is
then read into memory (no streaming), hashed like any corpus, and tokenized once into the
extrapos cache. Offline, or when the hub cannot be reached, loading raises a `UserError` saying so
(`datasets` retries for ~30 s first; `HF_HUB_OFFLINE=1` fails at once, or uses what is cached).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError

HF_PREFIX = "hf:"
_VALID_NAMES = ("validation", "valid", "val", "dev")


def parse_hf_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`"hf:NAME[:CONFIG][#COLUMN]"` -> (NAME or PATH, CONFIG or None, COLUMN or None)."""
    if not spec.startswith(HF_PREFIX):
        raise UserError(f"{spec!r} is not a Hugging Face dataset spec; write hf:NAME[:CONFIG]")
    rest = spec[len(HF_PREFIX) :]
    rest, _, column = rest.partition("#")
    name, _, config = rest.partition(":")
    if not name:
        raise UserError(
            f"{spec!r} names no dataset; write hf:NAME[:CONFIG][#COLUMN], e.g. "
            "hf:wikitext:wikitext-103-raw-v1"
        )
    return name, config or None, column or None


def load_hf_splits(spec: str) -> tuple[dict[str, list[str]], dict[str, list[str]], bool]:
    """Load `spec` with `datasets`; return (split -> rows, split -> row names, rows_are_lines).

    Only the splits found are returned (train always); `load_corpus` fills the others.
    """
    name, config, column = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise UserError(
            f"--data {spec} needs the Hugging Face `datasets` library; pip install "
            "'extrapos[hf]' (or pass a local text file or folder)"
        ) from e

    local = Path(name).expanduser()
    if local.is_dir():
        try:
            ds = datasets.load_from_disk(str(local))
        except Exception as e:  # datasets raises FileNotFoundError/ValueError/... here
            raise UserError(
                f"{local} is not a dataset saved with `save_to_disk` ({type(e).__name__}: {e}); "
                "pass hf:NAME for a hub dataset or a plain folder without the hf: prefix"
            ) from e
    else:
        ds = _load_from_hub(datasets, spec, name, config)

    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    found = dict(ds.items())
    valid = next((n for n in _VALID_NAMES if n in found), None)
    chosen = {
        split: found[source]
        for split, source in (("train", "train"), ("valid", valid), ("test", "test"))
        if source in found
    }
    if "train" not in chosen:
        raise UserError(
            f"dataset {spec} has no train split (it has: {', '.join(found) or 'none'}); "
            "pick a dataset or config with a train split"
        )

    rows: dict[str, list[str]] = {}
    for split, table in chosen.items():
        col = _text_column(spec, table, column)
        rows[split] = [r if isinstance(r, str) else "" for r in table[col]]
    names = {split: [f"{split}[{i}]" for i in range(len(r))] for split, r in rows.items()}
    lines = all("\n" not in row[:-1] for split_rows in rows.values() for row in split_rows)
    return rows, names, lines


def _load_from_hub(datasets: Any, spec: str, name: str, config: str | None) -> Any:
    try:
        return datasets.load_dataset(name, config)
    except ConnectionError as e:
        raise UserError(
            f"could not reach the Hugging Face hub to load {spec} ({e}); check the network, or "
            "use a copy on disk: a folder of text files or an hf:PATH saved with save_to_disk"
        ) from e
    except Exception as e:
        kind = type(e).__name__
        if kind in ("DatasetNotFoundError", "FileNotFoundError", "RepositoryNotFoundError"):
            raise UserError(
                f"no dataset {name!r} found on the hub or in the local cache ({e}); check the "
                "name (hf:NAME[:CONFIG], e.g. hf:wikitext:wikitext-103-raw-v1)"
            ) from e
        # datasets lists the available configs in ValueError messages; keep them, on one line
        message = " ".join(str(e).split())
        raise UserError(
            f"datasets could not load {spec}: {kind}: {message}; fix the name or config "
            "(hf:NAME[:CONFIG])"
        ) from e


def _text_column(spec: str, table: Any, column: str | None) -> str:
    features = dict(table.features)
    if column is not None:
        if column not in features:
            raise UserError(
                f"dataset {spec} has no column {column!r}; columns: {', '.join(features)}"
            )
        return column
    if "text" in features:
        return "text"
    strings = [
        k for k, v in features.items() if getattr(v, "dtype", None) in ("string", "large_string")
    ]
    if len(strings) == 1:
        return strings[0]
    raise UserError(
        f"dataset {spec}: cannot tell which column holds the text (columns: "
        f"{', '.join(features)}); name it with hf:NAME[:CONFIG]#COLUMN"
    )
