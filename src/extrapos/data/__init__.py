"""Corpora and tokenizers.

`load_corpus(None | "builtin" | path | glob | "hf:NAME[:CONFIG]")` gives a `Corpus`
(train/valid/test documents with a content hash); `build_tokenizer("byte")` or
`build_tokenizer("bpe", vocab_size=N, corpus=corpus)` gives a `Tokenizer` whose `encode` returns
1-D int64. Tokenized splits are cached on disk (`extrapos.data.cache`, `$EXTRAPOS_CACHE`).
"""

from __future__ import annotations

from .corpus import (
    BUILTIN_MAX_BYTES,
    BUILTIN_TEST_MIN_BYTES,
    SPLITS,
    Corpus,
    list_corpora,
    load_corpus,
    split_by_name_hash,
)
from .dialogue import DialogueCorpus  # also registers the DailyDialog folder format
from .tokenizers import (
    BpeTokenizer,
    ByteTokenizer,
    Tokenizer,
    build_tokenizer,
    list_tokenizers,
    load_tokenizer,
    mask_token_id,
    save_tokenizer,
    tokenizer_from_dict,
    with_mask_token,
)

__all__ = [
    "BUILTIN_MAX_BYTES",
    "BUILTIN_TEST_MIN_BYTES",
    "SPLITS",
    "BpeTokenizer",
    "ByteTokenizer",
    "Corpus",
    "DialogueCorpus",
    "Tokenizer",
    "build_tokenizer",
    "list_corpora",
    "list_tokenizers",
    "load_corpus",
    "load_tokenizer",
    "mask_token_id",
    "save_tokenizer",
    "split_by_name_hash",
    "tokenizer_from_dict",
    "with_mask_token",
]
