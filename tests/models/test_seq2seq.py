"""Seq2Seq: shapes, padding, bidirectional encoder, causal decoder, KV cache and decoding."""

from __future__ import annotations

import pytest
import torch

from extrapos.core.errors import UserError
from extrapos.models.gpt import KVCache
from extrapos.models.seq2seq import Seq2Seq, Seq2SeqConfig
from extrapos.models.seq2seq_decoding import beam_decode, greedy_decode, translate_ids

ENCODINGS = ["sinusoidal", "learned", "nope", "rope", "alibi", "t5", "kerple_log", "fire"]


def _model(encoding: str, n_layer: int = 2, scale: float = 1.0, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = Seq2SeqConfig(
        vocab_size=40, n_layer=n_layer, n_head=2, d_model=32, encoding=encoding, dropout=0.0
    )
    model = Seq2Seq(cfg).eval()
    if scale != 1.0:  # weights far from init scale, so a positional or caching slip shows
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


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_padding_does_not_change_a_row(encoding: str) -> None:
    """A sentence padded in a batch with a longer one gives the logits it gives alone."""
    model = _model(encoding, scale=4.0)
    cfg = model.config
    src = _src(cfg, [7, 4])
    tgt = torch.randint(0, cfg.pad_id, (2, 5), generator=torch.Generator().manual_seed(2))
    batch = model(src, tgt)
    alone = model(src[1:, :4], tgt[1:])
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoder_is_bidirectional_and_decoder_causal(encoding: str) -> None:
    model = _model(encoding, scale=3.0)
    cfg = model.config
    src = _src(cfg, [8])
    tgt = torch.randint(0, cfg.pad_id, (1, 6), generator=torch.Generator().manual_seed(3))
    base = model(src, tgt)
    # changing the last source token changes the output at the first target position
    src2 = src.clone()
    src2[0, -1] = (src2[0, -1] + 1) % cfg.pad_id
    assert not torch.allclose(model(src2, tgt)[0, 0], base[0, 0], atol=1e-5)
    # changing a later target token leaves earlier positions unchanged
    tgt2 = tgt.clone()
    tgt2[0, 4] = (tgt2[0, 4] + 1) % cfg.pad_id
    torch.testing.assert_close(model(src, tgt2)[0, :4], base[0, :4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(src, tgt2)[0, 4], base[0, 4], atol=1e-5)


@pytest.mark.parametrize("encoding", ENCODINGS + ["xpos"])
def test_cached_decoding_equals_full_forward(encoding: str) -> None:
    """Step-by-step decoding with the KV cache and once-per-source cross k/v equals the full
    forward, with 3 layers and weights scaled 4x (an error would not hide in init noise)."""
    model = _model(encoding, n_layer=3, scale=4.0)
    cfg = model.config
    src = _src(cfg, [9, 5])
    tgt = torch.randint(0, cfg.pad_id, (2, 8), generator=torch.Generator().manual_seed(4))
    full = model(src, tgt)
    assert full.abs().max() > 1.0  # the scale-up took
    state = model.encode(src)
    cache = KVCache(cfg.n_layer)
    steps = [model.decode(tgt[:, t : t + 1], state, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("encoding", ["sinusoidal", "rope", "alibi", "t5"])
def test_beam_one_equals_greedy(encoding: str) -> None:
    model = _model(encoding, scale=3.0)
    src = _src(model.config, [6, 3, 9, 1], seed=5)
    greedy = greedy_decode(model, src, max_len_a=1.0, max_len_b=4)
    beam = beam_decode(model, src, beam=1, max_len_a=1.0, max_len_b=4)
    assert greedy == beam
    assert any(len(g) > 0 for g in greedy)


def test_greedy_equals_argmax_of_full_forward() -> None:
    """Greedy decoding re-derived from full forwards (no cache): the same tokens."""
    model = _model("alibi", scale=3.0)
    cfg = model.config
    src = _src(cfg, [7], seed=6)
    out = greedy_decode(model, src, max_len_a=0.0, max_len_b=6)
    seq = torch.tensor([[cfg.bos_id]])
    expected = []
    for _ in range(6):
        logits = model(src, seq)[0, -1]
        logits[[cfg.pad_id, cfg.bos_id]] = float("-inf")  # never produced
        token = int(logits.argmax())
        if token == cfg.eos_id:
            break
        expected.append(token)
        seq = torch.cat((seq, torch.tensor([[token]])), dim=1)
    assert out == [expected]
    assert 0 < len(expected)


def test_beam_search_finds_a_hypothesis_at_least_as_likely_as_greedy() -> None:
    model = _model("rope", scale=3.0)
    cfg = model.config
    src = _src(cfg, [6, 8], seed=7)

    def logprob(row: int, ids: list[int]) -> float:
        seq = torch.tensor([[cfg.bos_id, *ids]])
        logp = model(src[row : row + 1], seq)[0].log_softmax(-1)
        targets = [*ids, cfg.eos_id]
        return float(sum(logp[i, t] for i, t in enumerate(targets)))

    greedy = greedy_decode(model, src, max_len_a=0.0, max_len_b=30)
    beam = beam_decode(model, src, beam=4, length_penalty=0.0, max_len_a=0.0, max_len_b=30)
    for row in range(2):
        if len(greedy[row]) < 30 and len(beam[row]) < 30:  # both ended with EOS
            assert logprob(row, beam[row]) >= logprob(row, greedy[row]) - 1e-4


def test_output_length_limit_is_a_times_src_plus_b() -> None:
    model = _model("sinusoidal")
    cfg = model.config
    with torch.no_grad():  # make EOS impossible so every row runs to its limit
        model.embed.weight[cfg.eos_id].mul_(0).add_(-100.0)
    src = _src(cfg, [4, 10], seed=8)
    out = greedy_decode(model, src, max_len_a=1.5, max_len_b=2)
    assert [len(o) for o in out] == [int(1.5 * 4 + 2), int(1.5 * 10 + 2)]
    beams = beam_decode(model, src, beam=3, max_len_a=1.5, max_len_b=2)
    assert [len(o) for o in beams] == [8, 17]


def test_translate_ids_batches_keep_input_order() -> None:
    model = _model("alibi", scale=2.0)
    cfg = model.config
    g = torch.Generator().manual_seed(9)
    sources = [torch.randint(0, cfg.pad_id, (n,), generator=g) for n in (5, 2, 9, 3, 7)]
    together = translate_ids(model, sources, beam=2, batch_tokens=20)
    alone = [translate_ids(model, [s], beam=2)[0] for s in sources]
    assert together == alone


@pytest.mark.parametrize("encoding", ["cope", "rerope"])
def test_encodings_without_a_bidirectional_form_refuse_by_name(encoding: str) -> None:
    with pytest.raises(UserError, match=encoding):
        Seq2Seq(Seq2SeqConfig(vocab_size=40, n_layer=1, n_head=2, d_model=32, encoding=encoding))


def test_config_validation_and_roundtrip() -> None:
    cfg = Seq2SeqConfig(vocab_size=40, n_layer=1, n_head=2, d_model=32, encoding="t5")
    assert Seq2SeqConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.pad_id, cfg.bos_id, cfg.eos_id) == (37, 38, 39)
    with pytest.raises(UserError, match="dropout"):
        Seq2SeqConfig(vocab_size=40, dropout=1.5)
    with pytest.raises(UserError, match="unknown field"):
        Seq2SeqConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(UserError):
        Seq2SeqConfig(vocab_size=40, encoding="no-such-encoding")


def test_tied_embeddings_and_separate_stack_encodings() -> None:
    model = _model("t5")
    names = [n for n, _ in model.named_parameters()]
    assert not any("lm_head" in n for n in names)  # the output projection is embed.weight
    assert any(n.startswith("encoder_encoding.") for n in names)
    assert any(n.startswith("decoder_encoding.") for n in names)


def test_fire_encoder_form_is_the_causal_bias_plus_its_signed_mirror() -> None:
    from extrapos.encodings import build_encoding

    torch.manual_seed(0)
    fire = build_encoding("fire", num_heads=2, init_L=4.0)
    pos = torch.arange(8)
    causal, signed = fire.position_bias(pos, pos), fire.position_bias(pos, pos, signed=True)
    lower = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(signed[:, lower], causal[:, lower])
    # keys after the query get f(-x) where the unsigned form gives f(x): the sides differ
    assert not torch.allclose(signed[:, ~lower], causal[:, ~lower], atol=1e-4)
