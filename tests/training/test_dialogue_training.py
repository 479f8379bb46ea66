"""Training on a dialogue corpus: windows at turn starts, loss on every token or responses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extrapos.core.errors import UserError
from extrapos.data import build_tokenizer, load_corpus
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.config import TrainConfig
from extrapos.training.lm import _lm_loss, train


def _config() -> GPTConfig:
    return GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, encoding="rope")


def test_loss_on_is_validated() -> None:
    with pytest.raises(UserError, match="train.loss_on"):
        TrainConfig(loss_on="assistant")  # type: ignore[arg-type]
    assert "loss_on" in TrainConfig(loss_on="responses").trajectory()


def test_responses_need_a_dialogue_corpus() -> None:
    with pytest.raises(UserError, match="needs a dialogue corpus"):
        train(_config(), TrainConfig(steps=1, train_len=16, loss_on="responses"),
              load_corpus("builtin"), build_tokenizer("byte"))  # fmt: skip


def test_masked_loss_and_empty_batch() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    expected = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    torch.testing.assert_close(_lm_loss(logits, targets), expected)
    empty = _lm_loss(logits, torch.full((2, 3), -100))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_train_responses_vs_all(tmp_path, make_dialogue_folder) -> None:
    corpus = load_corpus(str(make_dialogue_folder(tmp_path / "dd")))
    tok = build_tokenizer("byte")
    runs = {}
    for loss_on in ("all", "responses"):
        cfg = TrainConfig(train_len=24, batch_size=4, steps=3, seed=0, loss_on=loss_on)
        runs[loss_on] = train(_config(), cfg, corpus, tok, progress=False)
    # same windows (same sampler draws), different targets -> different losses and weights
    assert runs["all"].losses[0] != pytest.approx(runs["responses"].losses[0], rel=1e-6)
    a = runs["all"].model.state_dict()
    b = runs["responses"].model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # the first step's loss is the loss of the masked targets of the first batch
    layout = corpus.layout("train", tok)
    x, y = layout.sample_batch(4, 24, torch.Generator().manual_seed(0), loss_on="responses")
    torch.manual_seed(0)
    fresh = GPT(_config())
    with torch.no_grad():
        first = _lm_loss(fresh(x), y).item()
    assert runs["responses"].losses[0] == pytest.approx(first, rel=1e-5)


def test_validate_scores_only_masked_targets(tmp_path, make_dialogue_folder) -> None:
    """validate(target_mask=) is the mean NLL of the masked targets, brute force; an all-True
    mask is the unmasked number; data.dialogue.target_mask is the response layout."""
    import numpy as np

    from extrapos.data.dialogue import target_mask
    from extrapos.training.lm import validate

    corpus = load_corpus(str(make_dialogue_folder(tmp_path / "dd")))
    tok = build_tokenizer("byte")
    tokens = corpus.token_array("valid", tok)
    mask = target_mask(corpus, "valid", tok, "responses")
    assert target_mask(corpus, "valid", tok, "all") is None
    assert mask.shape == tokens.shape and 0 < mask.sum() < len(mask)
    with pytest.raises(UserError, match="needs a dialogue corpus"):
        target_mask(load_corpus("builtin"), "valid", tok, "responses")
    torch.manual_seed(0)
    model = GPT(_config()).eval()
    length, max_tokens = 24, 24 * 5
    got = validate(model, tokens, length, max_tokens, batch_size=2, target_mask=mask)
    total, count = 0.0, 0
    for w in range(5):  # windows 0..4 of 24 inputs, targets at w·24 + 1 .. w·24 + 24
        ids = torch.as_tensor(np.asarray(tokens[w * length : (w + 1) * length + 1]))
        with torch.no_grad():
            nll = F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="none")
        keep = torch.as_tensor(mask[w * length + 1 : (w + 1) * length + 1])
        total += float(nll[keep].double().sum())
        count += int(keep.sum())
    assert got == pytest.approx(total / count, rel=1e-6)
    plain = validate(model, tokens, length, max_tokens, batch_size=2)
    everything = np.ones_like(mask)
    assert validate(model, tokens, length, max_tokens, 2, target_mask=everything) == plain
    assert got != pytest.approx(plain, rel=1e-4)


def test_periodic_validation_honours_loss_on(tmp_path, make_dialogue_folder) -> None:
    from extrapos.data.dialogue import target_mask
    from extrapos.training.config import EvalConfig
    from extrapos.training.lm import validate

    corpus = load_corpus(str(make_dialogue_folder(tmp_path / "dd")))
    tok = build_tokenizer("byte")
    tokens = corpus.token_array("valid", tok)
    for loss_on in ("all", "responses"):
        cfg = TrainConfig(train_len=24, batch_size=4, steps=2, seed=0, loss_on=loss_on)
        run = train(_config(), cfg, corpus, tok, progress=False,
                    eval_config=EvalConfig(every=2, max_tokens=240))  # fmt: skip
        ((step, value),) = run.valid
        mask = target_mask(corpus, "valid", tok, loss_on)
        expected = validate(run.model, tokens, 24, 240, 4, target_mask=mask)
        assert step == 2 and value == pytest.approx(expected, rel=1e-9)
        if loss_on == "responses":
            # near init the two means are close, but not equal (5.4998 vs 5.5000 here)
            assert abs(value - validate(run.model, tokens, 24, 240, 4)) > 1e-5
