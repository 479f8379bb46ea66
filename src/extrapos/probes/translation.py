"""Scoring a translation model by source length: corpus scores, length buckets, concatenation.

All scores are sacrebleu's (Post 2018) on detokenized text — the model's joint BPE is byte-level
and lossless, so a hypothesis decodes straight back to text: corpus BLEU (13a tokenization) and
chrF (character 6-grams, β = 2). The length ratio is BLEU's sys_len / ref_len (hypothesis words
over reference words): a positional failure shows as dropped output (ratio ≪ 1) or runaway
repetition (ratio ≫ 1), which BLEU alone folds into one number.

- buckets: the test pairs grouped by *source length in model tokens* (the positions the encoder
  sees): 1-10, 11-20, 21-40, 41-80, 81+; each bucket scored as its own corpus (`n` pairs; a
  bucket with no pair has null scores).
- concatenation test (Neishi & Yoshinaga 2019 and Varis & Bojar 2021 probe long inputs the same
  way): k consecutive test sentences joined by a space into one input, their references joined
  the same way, for k = 1, 2, 4, 8 — a model trained on short pairs then faces inputs ~k× longer.
  A final group with fewer than k sentences is dropped, so every input holds exactly k.

Output (the `extrapos translate eval` contract):
    {"bleu", "chrf", "len_ratio", "n_sentences",
     "concat": {"1": {"bleu", "chrf", "len_ratio", "n"}, "2": ...},
     "buckets": {"1-10": {"bleu", "chrf", "len_ratio", "n"}, ...}}
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from extrapos.core.errors import UserError
from extrapos.models.seq2seq_decoding import translate_ids

BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1-10", 1, 10),
    ("11-20", 11, 20),
    ("21-40", 21, 40),
    ("41-80", 41, 80),
    ("81+", 81, None),
)
DEFAULT_CONCAT = (1, 2, 4, 8)


def bucket_name(n_tokens: int) -> str:
    """The bucket of a source of `n_tokens` tokens (0 counts as 1-10)."""
    return next(name for name, _, hi in BUCKETS if hi is None or n_tokens <= hi)


def corpus_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """{"bleu", "chrf", "len_ratio", "n"} of hypotheses against one reference each."""
    try:
        import sacrebleu
    except ImportError as exc:
        raise UserError("translation scores need sacrebleu; pip install 'extrapos[mt]'") from exc

    if len(hyps) != len(refs):
        raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references; they must match")
    if not hyps:
        return {"bleu": None, "chrf": None, "len_ratio": None, "n": 0}
    bleu = sacrebleu.corpus_bleu(list(hyps), [list(refs)])
    chrf = sacrebleu.corpus_chrf(list(hyps), [list(refs)])
    ratio = bleu.sys_len / bleu.ref_len if bleu.ref_len else None
    return {"bleu": bleu.score, "chrf": chrf.score, "len_ratio": ratio, "n": len(hyps)}


def translate_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    batch_tokens: int = 4096,
) -> list[str]:
    """Translate source sentences with a trained `Seq2Seq` and its tokenizer."""
    tok = tokenizer
    sources = [tok.encode(t) for t in texts]
    outs = translate_ids(model, sources, beam, length_penalty, max_len_a, max_len_b, batch_tokens)
    return [tok.decode(torch.tensor(ids, dtype=torch.long)) for ids in outs]


def concat_groups(items: Sequence[str], k: int) -> list[str]:
    """Consecutive groups of k items joined by a space; an incomplete last group is dropped."""
    return [" ".join(items[i : i + k]) for i in range(0, len(items) - k + 1, k)]


def evaluate_translation(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    references: Sequence[str],
    concat: Sequence[int] = DEFAULT_CONCAT,
    beam: int = 4,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Corpus, per-bucket and concatenation scores (see the module docstring)."""
    if len(sources) != len(references):
        raise UserError(
            f"{len(sources)} source sentences but {len(references)} references; the files must "
            "be line-aligned"
        )
    if not sources:
        raise UserError("no sentences to evaluate; check the split or files")
    if any(k < 1 for k in concat):
        raise UserError(f"--concat values must be >= 1, got {list(concat)}")
    ks = sorted(set(concat) | {1})
    decode = {
        "beam": beam,
        "length_penalty": length_penalty,
        "max_len_a": max_len_a,
        "max_len_b": max_len_b,
    }
    outputs: dict[int, list[str]] = {}
    seconds: dict[str, float] = {}
    for k in ks:
        src_k = concat_groups(sources, k)
        if not src_k:
            continue
        t0 = time.perf_counter()
        outputs[k] = translate_texts(
            model, tokenizer, src_k, beam, length_penalty, max_len_a, max_len_b
        )
        seconds[str(k)] = time.perf_counter() - t0
        if progress:
            print(f"  concat k={k}: {len(src_k)} inputs in {seconds[str(k)]:.1f} s", flush=True)
    hyps = outputs[1]
    main = corpus_scores(hyps, references)
    lengths = [len(tokenizer.encode(s)) for s in sources]
    buckets = {}
    for name, _, _ in BUCKETS:
        rows = [i for i, n in enumerate(lengths) if bucket_name(n) == name]
        buckets[name] = corpus_scores([hyps[i] for i in rows], [references[i] for i in rows])
    concat_scores = {
        str(k): corpus_scores(outputs[k], concat_groups(references, k))
        for k in ks
        if k in outputs and (k in concat or k == 1)
    }
    return {
        "bleu": main["bleu"],
        "chrf": main["chrf"],
        "len_ratio": main["len_ratio"],
        "n_sentences": len(sources),
        "concat": concat_scores,
        "buckets": buckets,
        "decode": decode,
        "decode_seconds": seconds,
        "hypotheses": hyps,
    }


__all__ = [
    "BUCKETS",
    "DEFAULT_CONCAT",
    "bucket_name",
    "concat_groups",
    "corpus_scores",
    "evaluate_translation",
    "translate_texts",
]
