"""Tests for extrapos.data.tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.data.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    build_tokenizer,
    list_tokenizers,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)


@pytest.mark.parametrize("text", ["", "hello, world\n", "héllo wörld ✓ 中文 😀", "a\0b\tc"])
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and ids.ndim == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


def test_decode_cut_character_is_replaced_not_raised() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("é")  # two bytes
    assert tok.decode(ids[:1]) == "\ufffd"


def test_decode_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="0, 256"):
        ByteTokenizer().decode([65, 256])


def test_token_bytes_and_protocol() -> None:
    tok = ByteTokenizer()
    tb = tok.token_bytes()
    assert tb.shape == (256,) and tb.dtype == torch.int64 and bool((tb == 1).all())
    assert isinstance(tok, Tokenizer)
    assert tok.name == "byte" and tok.vocab_size == 256


def test_dict_and_file_round_trip(tmp_path) -> None:
    tok = ByteTokenizer()
    d = tok.to_dict()
    assert d["type"] == "byte"
    assert json.loads(json.dumps(d)) == d
    assert tokenizer_from_dict(d) == tok

    path = tmp_path / "run" / "tokenizer.json"
    save_tokenizer(tok, path)
    save_tokenizer(tok, path)  # overwrite in place
    assert json.loads(path.read_text())["type"] == "byte"
    assert load_tokenizer(path) == tok
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files left


def test_build_tokenizer() -> None:
    assert "byte" in list_tokenizers()
    assert build_tokenizer("byte") == ByteTokenizer()
    with pytest.raises(UserError, match="unknown tokenizer 'nope'.*byte"):
        build_tokenizer("nope")
    with pytest.raises(UserError, match="bad options"):
        build_tokenizer("byte", merges=3)


def test_bad_tokenizer_descriptions(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown tokenizer type 'wordpiece'.*byte"):
        tokenizer_from_dict({"type": "wordpiece"})
    with pytest.raises(UserError, match='"type"'):
        tokenizer_from_dict({"vocab_size": 256})
    with pytest.raises(UserError, match="vocab_size"):
        tokenizer_from_dict({"type": "byte", "vocab_size": 300})
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(bad)


# ----------------------------------------------------------------------------- BPE

BPE_TEXT = [
    "".join(f"def function_{i}(value):\n    return value * {i} + {i % 7}\n\n" for i in range(300)),
    "héllo wörld ✓ 中文 😀 — the quick brown fox jumps over the lazy dog.\n" * 40,
]


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("tokenizers")
    from extrapos.data.tokenizers import BpeTokenizer

    return BpeTokenizer.train(BPE_TEXT, vocab_size=400)


@pytest.mark.parametrize(
    "text", ["", "def function_3(value):", "héllo wörld ✓ 中文 😀", "unseen \x00 bytes \t\r\n"]
)
def test_bpe_round_trip_is_exact(bpe, text: str) -> None:
    ids = bpe.encode(text)
    assert ids.dtype == torch.int64 and ids.ndim == 1
    assert bpe.decode(ids) == text
    assert bpe.vocab_size == 400 and isinstance(bpe, Tokenizer)


def test_bpe_merges_and_counts_bytes(bpe) -> None:
    text = BPE_TEXT[0]
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2  # it learned merges
    tb = bpe.token_bytes()
    assert tb.shape == (400,) and tb.dtype == torch.int64 and int(tb.min()) >= 1
    for t in ("héllo wörld ✓ 中文 😀", text):  # bytes of the targets = bytes of the text
        assert int(tb[bpe.encode(t)].sum()) == len(t.encode("utf-8"))
    with pytest.raises(ValueError, match=r"\[0, 400\)"):
        bpe.decode([400])
    assert bpe.decode(bpe.encode("é")[:1]) in ("\ufffd", "é")  # a cut character never raises


def test_bpe_long_text_is_encoded_in_chunks_without_changing_ids(bpe, monkeypatch) -> None:
    import extrapos.data.tokenizers as tokmod

    text = "".join(BPE_TEXT) * 3 + "x  \n  y\n\nz"
    whole = bpe._tok.encode(text).ids
    monkeypatch.setattr(tokmod, "_ENCODE_CHUNK", 97)  # many cuts
    assert bpe.encode(text).tolist() == whole


def test_bpe_save_and_reload_exactly(bpe, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    save_tokenizer(bpe, path)
    again = load_tokenizer(path)
    assert again == bpe and again.vocab_size == bpe.vocab_size
    assert torch.equal(again.encode(BPE_TEXT[1]), bpe.encode(BPE_TEXT[1]))
    import tokenizers  # the file is the library's own format

    assert (
        tokenizers.Tokenizer.from_file(str(path)).encode("def f").ids
        == bpe.encode("def f").tolist()
    )
    assert tokenizer_from_dict(bpe.to_dict()) == bpe


def test_build_bpe_trains_on_the_train_split_and_caches(monkeypatch) -> None:
    pytest.importorskip("tokenizers")
    from extrapos.data import Corpus
    from extrapos.data.tokenizers import BpeTokenizer

    corpus = Corpus.from_splits(
        "toy", {"train": BPE_TEXT, "valid": ["zzz qqq\n"], "test": ["www\n"]}
    )
    first = build_tokenizer("bpe", vocab_size=300, corpus=corpus)
    assert first.vocab_size == 300
    assert first == BpeTokenizer.train(corpus.splits["train"], 300)  # deterministic
    with pytest.raises(UserError, match=">= 256"):
        build_tokenizer("bpe", vocab_size=100, texts=["abc"])
    calls = []
    monkeypatch.setattr(BpeTokenizer, "train", classmethod(lambda *a: calls.append(a)))
    assert build_tokenizer("bpe", vocab_size=300, corpus=corpus) == first  # from the cache
    assert not calls
    with pytest.raises(UserError, match="corpus="):
        build_tokenizer("bpe", vocab_size=300)
    with pytest.raises(UserError, match="byte tokenizer has vocab_size 256"):
        build_tokenizer("byte", vocab_size=300)


def test_bpe_without_the_library_is_a_clear_error(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(UserError, match=r"pip install 'extrapos\[bpe\]'"):
        build_tokenizer("bpe", vocab_size=300, texts=["abc"])
