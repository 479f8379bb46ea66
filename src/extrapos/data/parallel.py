"""Parallel (translation) data: sentence pairs, a joint BPE, and token-count batches.

Two sources, one result (`ParallelData`: split -> list of (source, target) strings):

    DIR                 `{split}.{lang}` line-aligned files in one folder — the layout of
                        Multi30k, OpenNMT and fairseq raw data (`train.en`, `train.de`,
                        `val.en`, `test_2016_flickr.de`, …); line i of each is one pair.
    hf:NAME[:CONFIG]    a `datasets` translation dataset (hub name, or a folder written by
                        `save_to_disk`) whose `translation` column maps language -> text, as in
                        `wmt14` / `iwslt2017`.

The train split is `train`; the validation split the first of `val`, `valid`, `validation`,
`dev` present. Empty pairs (either side blank after stripping) are skipped and counted
(`ParallelData.skipped`).

Joint BPE (Sennrich et al. 2016, one vocabulary for both languages, so embeddings can be
tied): the byte-level BPE of `extrapos.data.tokenizers`, trained on both sides of the train
split, cached by the sha256 of the training text and the vocabulary size.

Token-count batches (Vaswani et al. 2017, section 5.1: "sentence pairs were batched together by
approximate sequence length"): pairs sorted by length, cut into batches of at most
`max_tokens` padded tokens (rows · longest side), the batch order shuffled per epoch by a seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extrapos.core.errors import UserError

from .hf_datasets import HF_PREFIX, parse_hf_spec
from .tokenizers import BpeTokenizer

VALID_SPLITS = ("val", "valid", "validation", "dev")
Pair = tuple[str, str]


@dataclass
class ParallelData:
    """Sentence pairs per split, `src` -> `tgt`; `skipped[split]` empty pairs dropped."""

    src: str
    tgt: str
    splits: dict[str, list[Pair]]
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""

    @property
    def valid_split(self) -> str | None:
        return next((s for s in VALID_SPLITS if s in self.splits), None)

    def split(self, name: str) -> list[Pair]:
        if name not in self.splits:
            raise UserError(
                f"{self.source} has no split {name!r} for {self.src}-{self.tgt}; splits: "
                f"{', '.join(sorted(self.splits))}"
            )
        return self.splits[name]

    def content_hash(self) -> str:
        """sha256 of the train pairs (what the tokenizer is trained on)."""
        h = hashlib.sha256(f"{self.src}\0{self.tgt}\0".encode())
        for s, t in self.splits["train"]:
            h.update(s.encode("utf-8") + b"\0" + t.encode("utf-8") + b"\n")
        return h.hexdigest()


def _clean(src_lines: Sequence[str], tgt_lines: Sequence[str]) -> tuple[list[Pair], int]:
    pairs, skipped = [], 0
    for s, t in zip(src_lines, tgt_lines, strict=True):
        s, t = (s or "").strip(), (t or "").strip()
        if s and t:
            pairs.append((s, t))
        else:
            skipped += 1
    return pairs, skipped


def _read_lines(path: Path) -> list[str]:
    """Lines split on "\n" only (never on the Unicode separators `splitlines` knows, which
    would break the alignment); a final newline ends the last line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc}); convert it with iconv") from exc
    return lines[:-1] if lines[-1] == "" else lines


def load_parallel_dir(folder: str | Path, src: str, tgt: str) -> ParallelData:
    """Read every `{split}.{src}` / `{split}.{tgt}` pair of files in `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder of {{split}}.{{lang}} files")
    files = [p for p in folder.iterdir() if p.is_file() and "." in p.name]
    langs = sorted({p.name.rsplit(".", 1)[1] for p in files})
    for lang in (src, tgt):
        if not any(p.name.endswith(f".{lang}") for p in files):
            raise UserError(
                f"{folder} has no files for language {lang!r} ({{split}}.{lang}); languages "
                f"found: {', '.join(langs) or 'none'}"
            )
    splits: dict[str, list[Pair]] = {}
    skipped: dict[str, int] = {}
    for src_path in sorted(folder.glob(f"*.{src}")):
        split = src_path.name[: -len(src) - 1]
        tgt_path = folder / f"{split}.{tgt}"
        if not tgt_path.is_file():
            continue
        src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
        if len(src_lines) != len(tgt_lines):
            raise UserError(
                f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
                f"parallel files must be line-aligned"
            )
        splits[split], skipped[split] = _clean(src_lines, tgt_lines)
    if "train" not in splits:
        raise UserError(
            f"{folder} has no train.{src} + train.{tgt} pair; splits found: "
            f"{', '.join(sorted(splits)) or 'none'}"
        )
    return ParallelData(src, tgt, splits, skipped, source=str(folder))


def load_parallel_hf(spec: str, src: str, tgt: str) -> ParallelData:
    """A `datasets` dataset with a `translation` column of {lang: text} dicts."""
    name, config, _ = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError as e:
        raise UserError(f"--data {spec} needs `datasets`; pip install 'extrapos[hf]'") from e
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            ds: Any = datasets.load_from_disk(str(local))
        except Exception as e:
            raise UserError(f"{local} is not a dataset saved with `save_to_disk` ({e})") from e
    else:
        from .hf_datasets import _load_from_hub

        ds = _load_from_hub(datasets, spec, name, config)
    if isinstance(ds, datasets.Dataset):
        ds = {"train": ds}
    splits: dict[str, list[Pair]] = {}
    skipped: dict[str, int] = {}
    for split, table in ds.items():
        if "translation" not in table.column_names:
            raise UserError(
                f"dataset {spec} split {split} has no 'translation' column (columns: "
                f"{', '.join(table.column_names)}); pick a translation dataset"
            )
        rows = table["translation"]
        langs = sorted(set().union(*(r.keys() for r in rows[:100]))) if len(rows) else []
        for lang in (src, tgt):
            if rows and lang not in langs:
                raise UserError(
                    f"dataset {spec} has no language {lang!r}; languages found: {', '.join(langs)}"
                )
        name_ = "val" if split in VALID_SPLITS else split
        splits[name_], skipped[name_] = _clean(
            [r.get(src) for r in rows], [r.get(tgt) for r in rows]
        )
    if "train" not in splits:
        raise UserError(f"dataset {spec} has no train split (it has: {', '.join(splits)})")
    return ParallelData(src, tgt, splits, skipped, source=spec)


def load_parallel(data: str, src: str, tgt: str) -> ParallelData:
    """`hf:NAME` via `datasets`, else a folder of `{split}.{lang}` files."""
    if src == tgt:
        raise UserError(f"--src and --tgt are both {src!r}; give two languages")
    if data.startswith(HF_PREFIX):
        return load_parallel_hf(data, src, tgt)
    return load_parallel_dir(data, src, tgt)


#: bump when the recipe changes, to invalidate cached tokenizers
_JOINT_BPE_RECIPE = 1


def joint_bpe(data: ParallelData, vocab_size: int = 8000) -> BpeTokenizer:
    """Byte-level BPE trained on both sides of the train split, cached by content hash."""
    from .cache import cached_json, store_json
    from .tokenizers import _import_tokenizers

    version = _import_tokenizers().__version__
    key_text = f"joint-bpe:{_JOINT_BPE_RECIPE}:{version}:{data.content_hash()}:{vocab_size}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cached = cached_json("tokenizers", key)
    if cached is not None:
        try:
            return BpeTokenizer(cached)
        except UserError:
            pass  # a corrupt entry: retrain
    pairs = data.splits["train"]
    tok = BpeTokenizer.train((s for pair in pairs for s in pair), vocab_size)
    store_json("tokenizers", key, tok.to_dict())
    return tok


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token ids of each side, no specials: [(src (S,), tgt (T,))]."""
    return [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in pairs]


def filter_max_src(
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor]], max_src_tokens: int | None
) -> list[int]:
    """Indices of the pairs whose source has at most `max_src_tokens` tokens (all if None)."""
    if max_src_tokens is not None and max_src_tokens < 1:
        raise UserError(f"--max-src-tokens must be >= 1, got {max_src_tokens}")
    return [
        i for i, (s, _) in enumerate(encoded) if max_src_tokens is None or len(s) <= max_src_tokens
    ]


def token_batches(lengths: Sequence[tuple[int, int]], max_tokens: int) -> list[list[int]]:
    """Length-bucketed batches: indices sorted by (source, target) length, cut so that
    rows · max(longest source, longest target) <= max_tokens (a longer pair gets its own batch).
    Deterministic; shuffle the batch order per epoch (`epoch_order`)."""
    if max_tokens < 1:
        raise UserError(f"max tokens per batch must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i][0], lengths[i][1], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = max(lengths[i]) + 1  # + BOS/EOS
        if current and (len(current) + 1) * max(longest, size) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def epoch_order(num_batches: int, seed: int, epoch: int) -> list[int]:
    """The batch order of one epoch: a permutation fixed by (seed, epoch), so resuming at any
    step replays the same batches."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_batches).tolist()


__all__ = [
    "ParallelData",
    "encode_pairs",
    "epoch_order",
    "filter_max_src",
    "joint_bpe",
    "load_parallel",
    "load_parallel_dir",
    "load_parallel_hf",
    "token_batches",
]
