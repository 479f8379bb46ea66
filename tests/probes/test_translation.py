"""Translation scoring: sacrebleu corpus scores, source-length buckets, concatenation test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import extrapos.probes.translation as pt
from extrapos.core.errors import UserError
from extrapos.data.tokenizers import ByteTokenizer

SOURCES = [f"source sentence number {i} " + "w " * (i % 30) for i in range(24)]
REFS = [f"Satz Nummer {i} mit einigen Wörtern " + "x " * (i % 7) for i in range(24)]
TABLE = dict(zip(SOURCES, REFS, strict=True))


def _oracle(model, tokenizer, texts, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
    """Translates a concatenation of known sentences perfectly, sentence by sentence."""
    out = []
    for text in texts:
        parts, rest = [], text
        while rest:
            match = next(s for s in SOURCES if rest.startswith(s))
            parts.append(TABLE[match])
            rest = rest[len(match) :].lstrip(" ")
        out.append(" ".join(parts))
    return out


def _first_only(model, tokenizer, texts, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
    """Drops everything after the first sentence of a long input (a positional failure)."""
    return [_oracle(model, tokenizer, [t])[0].split(" Satz ")[0] for t in texts]


MODEL, TOK = SimpleNamespace(), ByteTokenizer()


def test_bucket_boundaries() -> None:
    names = [pt.bucket_name(n) for n in (0, 1, 10, 11, 20, 21, 40, 41, 80, 81, 500)]
    assert names == ["1-10", "1-10", "1-10", "11-20", "11-20", "21-40", "21-40", "41-80",
                     "41-80", "81+", "81+"]  # fmt: skip


def test_corpus_scores_of_a_perfect_and_a_truncated_output() -> None:
    perfect = pt.corpus_scores(REFS, REFS)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)
    assert perfect["len_ratio"] == pytest.approx(1.0) and perfect["n"] == 24
    half = pt.corpus_scores([" ".join(r.split()[: len(r.split()) // 2]) for r in REFS], REFS)
    assert half["len_ratio"] < 0.6 and half["bleu"] < 50
    assert pt.corpus_scores([], [])["bleu"] is None
    with pytest.raises(UserError, match="hypotheses"):
        pt.corpus_scores(["a"], [])


def test_concat_groups_drop_an_incomplete_last_group() -> None:
    assert pt.concat_groups(["a", "b", "c", "d", "e"], 2) == ["a b", "c d"]
    assert pt.concat_groups(["a"], 4) == []


def test_oracle_scores_100_at_every_k_and_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt, "translate_texts", _oracle)
    result = pt.evaluate_translation(MODEL, TOK, SOURCES, REFS, progress=False)
    assert result["n_sentences"] == 24
    assert set(result["concat"]) == {"1", "2", "4", "8"}
    for k, s in result["concat"].items():
        assert s["bleu"] == pytest.approx(100.0), k
        assert s["len_ratio"] == pytest.approx(1.0)
        assert s["n"] == 24 // int(k)
    buckets = result["buckets"]
    assert list(buckets) == ["1-10", "11-20", "21-40", "41-80", "81+"]
    assert sum(b["n"] for b in buckets.values()) == 24
    lengths = [len(s.encode()) for s in SOURCES]
    assert buckets["21-40"]["n"] == sum(21 <= n <= 40 for n in lengths)
    assert buckets["1-10"]["n"] == 0 and buckets["1-10"]["bleu"] is None


def test_dropped_output_shows_in_the_length_ratio_per_k(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pt, "translate_texts", _first_only)
    result = pt.evaluate_translation(MODEL, TOK, SOURCES, REFS, concat=[1, 2, 4], progress=False)
    ratios = [result["concat"][k]["len_ratio"] for k in ("1", "2", "4")]
    assert ratios[0] == pytest.approx(1.0)
    assert ratios[1] == pytest.approx(0.5, abs=0.1) and ratios[2] == pytest.approx(0.25, abs=0.1)
    assert result["concat"]["4"]["bleu"] < result["concat"]["1"]["bleu"]


def test_bad_input() -> None:
    with pytest.raises(UserError, match="line-aligned"):
        pt.evaluate_translation(MODEL, TOK, SOURCES, REFS[:3], progress=False)
    with pytest.raises(UserError, match="no sentences"):
        pt.evaluate_translation(MODEL, TOK, [], [], progress=False)
    with pytest.raises(UserError, match="concat"):
        pt.evaluate_translation(MODEL, TOK, SOURCES, REFS, concat=[0], progress=False)
