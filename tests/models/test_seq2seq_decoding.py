"""The fast Seq2Seq decoding (extrapos.models.seq2seq_decoding) against the first
implementation (tests/models/seq2seq_reference.py, per-step cache copies, no early exit): the same
outputs token for token; plus its cache handling. The semantic tests (beam 1 == greedy, greedy
== argmax of full forwards, length limits, batch order) are in test_seq2seq.py and run on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from extrapos.models.gpt import KVCache
from extrapos.models.seq2seq import Seq2Seq, Seq2SeqConfig
from extrapos.models.seq2seq_decoding import (
    _gather_cache,
    _new_cache,
    beam_decode,
    greedy_decode,
    translate_ids,
)


def _load_reference():  # noqa: ANN202  (a module; tests run with --import-mode=importlib)
    path = Path(__file__).with_name("seq2seq_reference.py")
    spec = importlib.util.spec_from_file_location("seq2seq_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()
reorder_cache = reference.reorder_cache


def _model(encoding: str, n_layer: int = 2, scale: float = 1.0) -> Seq2Seq:
    """A seeded tiny model; weights scaled so that outputs are peaked (test_seq2seq's)."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=40, n_layer=n_layer, n_head=2, d_model=32, encoding=encoding, dropout=0.0
    )
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "encoding" not in name:
                p.mul_(scale)
    return model


def _src(cfg: Seq2SeqConfig, lengths: list[int], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), cfg.pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(0, cfg.pad_id, (n,), generator=g)
    return src


@pytest.mark.parametrize("encoding", ["sinusoidal", "rope", "alibi", "t5", "fire", "xpos"])
def test_same_outputs_as_the_reference(encoding: str) -> None:
    """Weights x3 so that sentences end at different steps (early exit and compaction happen)
    and beams reorder; beam 1/2/4, length penalty 0 and 1, limits that bind."""
    model = _model(encoding, scale=3.0)
    src = _src(model.config, [6, 3, 9, 1, 12, 7], seed=5)
    for beam in (1, 2, 4):
        for lp in (0.0, 1.0):
            kw = {"beam": beam, "length_penalty": lp, "max_len_a": 1.0, "max_len_b": 6}
            assert beam_decode(model, src, **kw) == reference.beam_decode(model, src, **kw)
    got = greedy_decode(model, src, 1.0, 6)
    assert got == reference.greedy_decode(model, src, 1.0, 6)
    lengths = {len(o) for o in got}
    assert len(lengths) > 1  # rows ended at different steps: the batch did shrink


def test_translate_ids_same_as_the_reference_across_batches() -> None:
    model = _model("rope", scale=2.5)
    g = torch.Generator().manual_seed(3)
    sources = [torch.randint(0, model.config.pad_id, (n,), generator=g) for n in
               (5, 2, 9, 3, 7, 1, 11, 4, 0, 6)]  # fmt: skip
    for beam in (1, 3):
        got = translate_ids(model, sources, beam=beam, batch_tokens=30)
        assert got == reference.translate_ids(model, sources, beam=beam, batch_tokens=30)


@torch.no_grad()
def test_cache_is_preallocated_time_major_and_gathered_in_place() -> None:
    """Appends write into the preallocated buffer (no regrowth); gathering rows equals the
    reference reorder (index_select of whole rows) on the filled prefix."""
    model = _model("rope", n_layer=2, scale=2.0)
    cfg = model.config
    src = _src(cfg, [5, 4, 6])
    state = model.encode(src)
    cache = _new_cache(model, 3, 10, src.device)
    buffers = [cache.k[0].data_ptr(), cache.v[1].data_ptr()]
    plain = KVCache(cfg.n_layer)
    tgt = torch.randint(0, cfg.pad_id, (3, 4), generator=torch.Generator().manual_seed(1))
    for t in range(4):
        a = model.decode(tgt[:, t : t + 1], state, cache)
        b = model.decode(tgt[:, t : t + 1], state, plain)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [cache.k[0].data_ptr(), cache.v[1].data_ptr()] == buffers  # never reallocated
    assert cache.k[0].shape == (3, cfg.n_head, 10, cfg.d_model // cfg.n_head)
    assert cache.k[0].permute(2, 0, 1, 3).is_contiguous()  # time-major memory
    index = torch.tensor([2, 2, 0])
    _gather_cache(cache, index)
    reorder_cache(plain, index)
    for layer in range(cfg.n_layer):
        torch.testing.assert_close(cache.k[layer][:, :, :4], plain.k[layer][:, :, :4])
        torch.testing.assert_close(cache.v[layer][:, :, :4], plain.v[layer][:, :, :4])
    shrink = torch.tensor([1])
    _gather_cache(cache, shrink)
    reorder_cache(plain, shrink)
    assert cache.k[0].shape[0] == 1
    torch.testing.assert_close(cache.k[1][:, :, :4], plain.k[1][:, :, :4])


def _dynamic_ntk_model() -> Seq2Seq:
    """Dynamic-NTK RoPE trained to 4 positions: decoding past it changes the frequencies at
    every new length. Weights x10 (sharp attention) and embeddings x50 (peaked outputs) so
    that stale deeper layers would show: at x3 they moved the log-probs by only 1e-4."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(
        vocab_size=40, n_layer=3, n_head=2, d_model=32, encoding="rope", dropout=0.0,
        encoding_params={"scaling": {"rope_type": "dynamic", "factor": 8.0},
                         "max_position_embeddings": 4},
    )  # fmt: skip
    model = Seq2Seq(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(50.0 if name.startswith("embed") else 10.0)
    return model


def _step_logps(model: Seq2Seq, src: torch.Tensor, tokens: torch.Tensor, cache) -> torch.Tensor:  # noqa: ANN001
    from extrapos.models.seq2seq_decoding import _next_logp

    state = model.encode(src)
    with torch.no_grad():
        return torch.stack([_next_logp(model, tokens, t, state, cache) for t in range(12)])


def test_a_length_dependent_decoder_refills_its_cache_when_the_rotation_changes(monkeypatch):
    """Each step's log-probs through the cache equal recomputing the whole prefix (no cache),
    past the trained length; without the refill they would not (the check could fail)."""
    from extrapos.models import seq2seq_decoding

    model = _dynamic_ntk_model()
    src = _src(model.config, [7, 5], seed=2)
    tokens = torch.randint(
        0, model.config.pad_id, (2, 13), generator=torch.Generator().manual_seed(6)
    )
    exact = _step_logps(model, src, tokens, None)
    cached = _step_logps(model, src, tokens, _new_cache(model, 2, 13, src.device))
    torch.testing.assert_close(cached, exact, atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(seq2seq_decoding, "renew_if_stale", lambda cache, enc, n: False)
    stale = _step_logps(model, src, tokens, _new_cache(model, 2, 13, src.device))
    finite = exact.isfinite()  # pad and BOS are -inf in both
    assert (stale - exact)[finite].abs().max() > 1e-2
    monkeypatch.undo()
    # and whole searches: the same outputs as decoding without a cache
    uncached = _dynamic_ntk_model()
    monkeypatch.setattr(uncached, "new_cache", lambda: None)
    src = _src(model.config, [6, 3, 9, 1, 12, 7], seed=5)
    for beam in (1, 3):
        kw = {"beam": beam, "max_len_a": 1.0, "max_len_b": 6}
        assert beam_decode(model, src, **kw) == beam_decode(uncached, src, **kw)
