"""Both model kinds the probes score satisfy `ScoredLM`: extrapos's GPT and the transformers
adapter."""

from __future__ import annotations

import pytest

from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.scored import PositionLimit, ScoredLM


def test_gpt_is_a_scored_lm_with_a_position_limit():
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="learned",
                          encoding_params={"max_len": 8}))  # fmt: skip
    assert isinstance(model, ScoredLM) and isinstance(model.encoding, PositionLimit)
    assert model.encoding.max_len == 8


def test_the_transformers_adapter_is_a_scored_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    from extrapos.hf import load_hf_model

    config = transformers.GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.warns(UserWarning):  # no tokenizer files: the byte fallback says so
        model = load_hf_model(tmp_path)
    assert isinstance(model, ScoredLM) and isinstance(model.encoding, PositionLimit)
    assert model.encoding.max_len == 16
