"""Tests for extrapos.data.tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from extrapos.data.tokenizers import (
    ByteTokenizer,
    Tokenizer,
    build_tokenizer,
    list_tokenizers,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_dict,
)
from extrapos.errors import UserError


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
