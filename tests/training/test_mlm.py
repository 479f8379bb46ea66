"""The masked-LM objective: BERT masking, the masked loss, and training an encoder with it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import extrapos.training.lm as train_module
from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.data import Corpus, build_tokenizer, mask_token_id, with_mask_token
from extrapos.data.tokenizers import BYTE_MASK_ID, MASK_TOKEN, load_tokenizer, save_tokenizer
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.config import RunConfig
from extrapos.training.lm import TrainConfig, train
from extrapos.training.loop import fit_steps
from extrapos.training.mlm import IGNORE_INDEX, mask_tokens, mlm_loss

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(200)
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus.from_splits("toy", {"train": [TEXT], "valid": [TEXT[:500]], "test": [TEXT[:900]]})


def encoder(encoding: str = "alibi", **kw) -> GPTConfig:
    return GPTConfig(**{"n_layer": 1, "n_head": 2, "d_model": 16, "encoding": encoding,
                        "causal": False, **kw})  # fmt: skip


def mlm_config(**kw) -> TrainConfig:
    base = {"train_len": 16, "batch_size": 4, "steps": 6, "warmup_steps": 2, "objective": "mlm"}
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- masking


def test_masking_proportions_on_a_large_sample() -> None:
    """15% selected; of those 80% mask id, 10% a random token, 10% kept — within 5 sigma."""
    n, vocab, mask_id = 1_000_000, 256, BYTE_MASK_ID
    tokens = torch.arange(n) % 200  # never the mask id, so every kind of change is visible
    inputs, targets = mask_tokens(tokens, torch.Generator().manual_seed(0), vocab, mask_id)
    selected = targets != IGNORE_INDEX
    k = int(selected.sum())

    def within(count: int, total: int, p: float) -> None:
        sigma = math.sqrt(p * (1 - p) / total)
        assert abs(count / total - p) < 5 * sigma, (count / total, p)

    within(k, n, 0.15)
    masked = selected & (inputs == mask_id)
    changed = selected & (inputs != mask_id) & (inputs != tokens)
    kept = selected & (inputs == tokens)
    # a random replacement equals the original with probability 1/(V - 1)
    within(int(masked.sum()), k, 0.8)
    within(int(changed.sum()), k, 0.1 * (1 - 1 / (vocab - 1)))
    within(int(kept.sum()), k, 0.1 + 0.1 / (vocab - 1))
    # unselected positions are untouched and carry no target
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert torch.equal(targets[selected], tokens[selected])
    # random replacements cover the vocabulary except the mask id
    replaced = inputs[changed]
    assert int(replaced.min()) >= 0 and int(replaced.max()) < vocab
    assert set(replaced.unique().tolist()) == set(range(vocab)) - {mask_id}


def test_masking_is_exact_for_a_fixed_seed() -> None:
    """The same seed gives the same masks, and they are the documented draws: selection
    uniforms < 0.15, action uniforms (< 0.8 mask, < 0.9 random), random ids skipping mask_id."""
    tokens = torch.randint(0, 50, (4, 64), generator=torch.Generator().manual_seed(1))
    vocab, mask_id = 50, 7
    a = mask_tokens(tokens, torch.Generator().manual_seed(3), vocab, mask_id)
    b = mask_tokens(tokens, torch.Generator().manual_seed(3), vocab, mask_id)
    c = mask_tokens(tokens, torch.Generator().manual_seed(4), vocab, mask_id)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])

    g = torch.Generator().manual_seed(3)
    sel = torch.rand(tokens.shape, generator=g) < 0.15
    act = torch.rand(tokens.shape, generator=g)
    rid = torch.randint(0, vocab - 1, tokens.shape, generator=g)
    rid = rid + (rid >= mask_id).long()
    expected = tokens.clone()
    for idx in zip(*torch.nonzero(sel, as_tuple=True), strict=True):
        if act[idx] < 0.8:
            expected[idx] = mask_id
        elif act[idx] < 0.9:
            expected[idx] = rid[idx]
    assert torch.equal(a[0], expected)
    assert torch.equal(a[1], torch.where(sel, tokens, torch.full_like(tokens, IGNORE_INDEX)))


def test_masking_refuses_a_mask_id_outside_the_vocabulary() -> None:
    with pytest.raises(UserError, match="outside the vocabulary"):
        mask_tokens(torch.zeros(4, dtype=torch.long), torch.Generator(), 10, 10)


# ----------------------------------------------------------------------------- the loss


def test_loss_ignores_unselected_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 10, 30, requires_grad=True)
    targets = torch.full((2, 10), IGNORE_INDEX)
    targets[0, 3], targets[1, 7], targets[1, 0] = 5, 11, 29
    loss = mlm_loss(logits, targets)
    picked = logits[[0, 1, 1], [3, 7, 0]]
    expected = F.cross_entropy(picked, torch.tensor([5, 11, 29]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad_norm = logits.grad.norm(dim=-1)  # (2, 10): zero except at the three targets
    scored = targets != IGNORE_INDEX
    assert (grad_norm[~scored] == 0).all() and (grad_norm[scored] > 0).all()
    # changing the logits at unselected positions changes nothing
    other = logits.detach().clone()
    other[~scored] = torch.randn(int((~scored).sum()), 30) * 10
    torch.testing.assert_close(mlm_loss(other, targets), loss.detach())


def test_loss_with_nothing_selected_is_zero_not_nan() -> None:
    logits = torch.randn(1, 4, 8, requires_grad=True)
    loss = mlm_loss(logits, torch.full((1, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


# ----------------------------------------------------------------------------- mask ids


def test_byte_tokenizer_reuses_0xff_which_utf8_never_produces() -> None:
    tok = build_tokenizer("byte")
    assert mask_token_id(tok) == 0xFF and with_mask_token(tok) is tok and tok.vocab_size == 256
    text = "".join(chr(c) for c in range(0x20, 0x3000, 7)) + "\U0001f600 café"
    assert 0xFF not in tok.encode(text).tolist()


def test_bpe_gets_a_special_mask_token(tmp_path) -> None:
    tok = build_tokenizer("bpe", vocab_size=300, texts=[TEXT])
    with pytest.raises(UserError, match=r"no \[MASK\] token"):
        mask_token_id(tok)
    masked = with_mask_token(tok)
    assert masked.vocab_size == tok.vocab_size + 1
    assert mask_token_id(masked) == tok.vocab_size
    assert with_mask_token(masked) is masked
    assert masked.token_bytes()[mask_token_id(masked)] == 0  # stands for no text
    assert torch.equal(masked.encode(TEXT[:300]), tok.encode(TEXT[:300]))
    assert masked.decode([mask_token_id(masked)]) == MASK_TOKEN
    save_tokenizer(masked, tmp_path / "t.json")
    assert mask_token_id(load_tokenizer(tmp_path / "t.json")) == tok.vocab_size


# ----------------------------------------------------------------------------- configuration


def test_mlm_sets_causal_false_and_refuses_an_explicit_causal_true() -> None:
    run = RunConfig.from_dict({"model": {"encoding": "alibi"}, "train": {"objective": "mlm"}})
    assert run.model.causal is False
    lm = RunConfig.from_dict({"model": {"encoding": "alibi"}})
    assert lm.model.causal is True and lm.train.objective == "lm"
    with pytest.raises(UserError, match="model.causal is True"):
        RunConfig.from_dict(
            {"model": {"encoding": "alibi", "causal": True}, "train": {"objective": "mlm"}}
        )
    with pytest.raises(UserError, match="train.objective must be one of 'lm', 'mlm'"):
        TrainConfig(objective="clm")


def test_train_refuses_a_causal_model_with_mlm(corpus) -> None:
    config = GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="alibi")  # causal
    with pytest.raises(UserError, match="needs an encoder"):
        train(config, mlm_config(), corpus, build_tokenizer("byte"), progress=False)


@pytest.mark.parametrize("name", ["fire", "cope"])
def test_encodings_without_a_bidirectional_form_are_refused_by_name(name, tmp_path, capsys) -> None:
    argv = ["train", "--objective", "mlm", "--encoding", name, "--steps", "1", "--train-len",
            "16", "--n-layer", "1", "--d-model", "16", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"encoding '{name}'" in err and "bidirectional" in err and "mlm" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----------------------------------------------------------------------------- training


def test_a_tiny_encoder_learns_the_masked_tokens(corpus) -> None:
    result = train(
        encoder(), mlm_config(steps=60, lr=1e-2, batch_size=8), corpus, build_tokenizer("byte"),
        progress=False,
    )  # fmt: skip
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert all(math.isfinite(v) for v in result.losses)
    assert last < first - 1.0, (first, last)


def test_mlm_resume_reaches_the_same_weights(tmp_path, corpus, monkeypatch) -> None:
    """The masks come from the sampler generator, which a checkpoint saves: interrupted and
    resumed, the run ends on the same weights as one uninterrupted run."""
    tok = build_tokenizer("byte")
    config = mlm_config(save_every=3)
    whole = train(encoder(), config, corpus, tok, run_dir=tmp_path / "a", progress=False)
    real_sample, calls = train_module.sample_batch, {"n": 0}

    def crash_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_batch", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        train(encoder(), config, corpus, tok, run_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(train_module, "sample_batch", real_sample)
    resumed = train(
        encoder(), config, corpus, tok, run_dir=tmp_path / "b", resume=True, progress=False
    )
    assert resumed.losses == pytest.approx(whole.losses)
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # an lm resume of an mlm run is refused with the field that differs
    decoder = GPTConfig(**{**encoder().to_dict(), "causal": True})
    with pytest.raises(UserError, match=r"another model\.causal \(saved False, now True\)"):
        train(
            decoder, TrainConfig(**{**config.__dict__, "objective": "lm"}), corpus, tok,
            run_dir=tmp_path / "b", resume=True, progress=False,
        )  # fmt: skip


def copy_right_batch(generator: torch.Generator, batch: int, length: int = 24) -> torch.Tensor:
    """Rows of triples (c, c, SEP) with c uniform over 10 letters: the first letter of a triple
    is a copy of the token to its right and independent of everything to its left."""
    letters = torch.randint(0, 10, (batch, length // 3), generator=generator)
    sep = torch.full_like(letters, COPY_SEP)
    return torch.stack([letters, letters, sep], -1).view(batch, length)


COPY_SEP, COPY_MASK, COPY_VOCAB = 10, 11, 12


def test_a_bidirectional_model_uses_the_right_context() -> None:
    """Masked first letters — unpredictable from the left (chance 1/10) — are recovered from
    the right neighbour; and when that neighbour is changed, the prediction follows it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=COPY_VOCAB, n_layer=2, n_head=2, d_model=32,
                          encoding="rope", causal=False))  # fmt: skip
    g = torch.Generator().manual_seed(0)

    def loss_at(step: int) -> torch.Tensor:
        inputs, targets = mask_tokens(copy_right_batch(g, 32), g, COPY_VOCAB, COPY_MASK)
        return mlm_loss(model(inputs), targets)

    fit_steps(model, TrainConfig(steps=200, lr=3e-3, batch_size=32), loss_at, progress=False)
    g_eval = torch.Generator().manual_seed(1)
    x = copy_right_batch(g_eval, 256)
    inputs, _ = mask_tokens(x, g_eval, COPY_VOCAB, COPY_MASK)
    first = torch.zeros_like(x, dtype=torch.bool)
    first[:, 0::3] = True
    right_intact = torch.zeros_like(first)
    right_intact[:, :-1] = inputs[:, 1:] == x[:, 1:]
    scored = (inputs == COPY_MASK) & first & right_intact  # (b, s)
    assert int(scored.sum()) > 100
    with torch.no_grad():
        predicted = model(inputs).argmax(-1)
    accuracy = (predicted[scored] == x[scored]).float().mean().item()
    assert accuracy > 0.8, accuracy  # chance: 0.1

    # change every scored letter's right neighbour to another letter: the prediction follows
    swapped = inputs.clone()
    rows, cols = torch.nonzero(scored, as_tuple=True)
    swapped[rows, cols + 1] = (x[rows, cols + 1] + 1 + torch.randint(0, 9, rows.shape)) % 10
    with torch.no_grad():
        after = model(swapped).argmax(-1)[rows, cols]
    assert (after == swapped[rows, cols + 1]).float().mean().item() > 0.8
    assert (after == x[rows, cols]).float().mean().item() < 0.2
