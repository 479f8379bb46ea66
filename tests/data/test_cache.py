"""Tests for extrapos.data.cache: tokenized splits as memory maps, keyed by corpus + tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from extrapos.data import ByteTokenizer, Corpus
from extrapos.data.cache import CACHE_ENV, cache_dir, token_dtype, tokenizer_hash

TEXT = "".join(f"document line {i} ✓\n" for i in range(400))


def toy(text: str = TEXT) -> Corpus:
    return Corpus.from_splits("toy", {"train": [text], "valid": ["valid\n"], "test": ["test\n"]})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tokens_are_memory_mapped_from_the_cache(cache) -> None:
    corpus = toy()
    array = corpus.token_array("train", ByteTokenizer())
    assert isinstance(array, np.memmap) and array.dtype == np.uint8
    files = list(cache.glob("tokens/*/train.npy"))
    assert len(files) == 1
    assert (
        files[0].parent.name == f"{corpus.content_hash[:20]}-{tokenizer_hash(ByteTokenizer())[:20]}"
    )
    assert bytes(array) == TEXT.encode("utf-8")
    tokens = corpus.tokens("train", ByteTokenizer())
    assert tokens.dtype == torch.int64 and tokens.tolist() == list(TEXT.encode("utf-8"))
    assert not list(cache.rglob("*.tmp"))  # written atomically


def test_a_second_corpus_object_reads_the_cache_instead_of_encoding(cache, monkeypatch) -> None:
    toy().token_array("train", ByteTokenizer())

    def fail(self, text):
        raise AssertionError("encoded again")

    monkeypatch.setattr(ByteTokenizer, "encode", fail)
    again = toy().token_array("train", ByteTokenizer())  # same content, same key
    assert bytes(again) == TEXT.encode("utf-8")
    with pytest.raises(AssertionError, match="encoded again"):
        toy(TEXT + "changed\n").token_array("train", ByteTokenizer())  # another hash


def test_a_corrupt_entry_is_rebuilt(cache) -> None:
    toy().token_array("train", ByteTokenizer())
    (path,) = cache.glob("tokens/*/train.npy")
    path.write_bytes(b"garbage")
    assert bytes(toy().token_array("train", ByteTokenizer())) == TEXT.encode("utf-8")


def test_cache_off_and_unwritable(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None
    array = toy().token_array("train", ByteTokenizer())
    assert not isinstance(array, np.memmap) and bytes(array) == TEXT.encode("utf-8")

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match=f"set {CACHE_ENV}"):
        array = toy().token_array("train", ByteTokenizer())
    assert bytes(array) == TEXT.encode("utf-8")


def test_default_location_and_dtypes(monkeypatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert str(cache_dir()).endswith(".cache/extrapos")
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32
