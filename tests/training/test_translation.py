"""Translation training: schedule, label smoothing, train-short filter, exact resume."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from extrapos.core.errors import UserError
from extrapos.data.parallel import load_parallel
from extrapos.training.translation import (
    TranslationTrainConfig,
    inverse_sqrt_lr,
    load_seq2seq,
    smoothed_loss,
    train_translation,
)

WORDS = ["red", "blue", "dog", "cat", "runs", "sits", "big", "small", "man", "ball"]


def make_parallel(folder: Path, n_train: int = 120, seed: int = 0) -> Path:
    """A tiny 'language pair': target words are source words reversed, plus a suffix."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", 10), ("test", 16)):
        src, tgt = [], []
        for _ in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
            src.append(" ".join(words))
            tgt.append(" ".join(w[::-1] + "en" for w in words))
        (folder / f"{split}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder


MODEL = {"n_layer": 1, "n_head": 2, "d_model": 32, "encoding": "alibi", "dropout": 0.1}


def _config(**kw: object) -> TranslationTrainConfig:
    base = {"steps": 6, "max_tokens": 256, "warmup_steps": 3, "vocab_size": 300,
            "save_every": 3, "eval_every": 3, "device": "cpu"}  # fmt: skip
    return TranslationTrainConfig(**{**base, **kw})


def test_inverse_sqrt_schedule() -> None:
    assert inverse_sqrt_lr(1, 1e-3, 4) == pytest.approx(2.5e-4)
    assert inverse_sqrt_lr(4, 1e-3, 4) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(16, 1e-3, 4) == pytest.approx(1e-3 * math.sqrt(4 / 16))


def test_label_smoothing_formula_and_padding_ignored() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    targets = torch.tensor([[1, 2, 6], [3, 6, 6]])  # 6 = pad
    logp = logits.log_softmax(-1)
    keep = targets != 6
    nll = -logp.gather(-1, targets[..., None].clamp(max=6))[..., 0]
    uniform = -logp.mean(-1)
    expected = ((0.9 * nll + 0.1 * uniform)[keep]).mean()
    torch.testing.assert_close(smoothed_loss(logits, targets, 6, 0.1), expected)


def test_train_short_records_kept_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path / "cache"))
    data = load_parallel(str(make_parallel(tmp_path / "data")), "en", "de")
    out = tmp_path / "run"
    summary = train_translation(data, MODEL, _config(max_src_tokens=4), out, progress=False)
    _, tok = load_seq2seq(out)
    expected = sum(len(tok.encode(s)) <= 4 for s, _ in data.splits["train"])
    assert 0 < summary["kept_pairs"] == expected < summary["train_pairs"] == 120
    from extrapos.training.run_dir import load_config

    assert load_config(out)["data"]["kept_pairs"] == expected
    with pytest.raises(UserError, match="keeps no training pair"):
        train_translation(data, MODEL, _config(max_src_tokens=1), tmp_path / "r2", progress=False)


def test_resume_continues_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 steps + resume 3 steps == 6 steps uninterrupted (dropout on: the RNG is restored)."""
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path / "cache"))
    data = load_parallel(str(make_parallel(tmp_path / "data", n_train=60)), "en", "de")
    full, part = tmp_path / "full", tmp_path / "part"
    train_translation(data, MODEL, _config(), full, progress=False)
    train_translation(data, MODEL, _config(steps=3), part, progress=False)
    # resuming reads the run's saved settings, extended to the new step count
    train_translation(data, MODEL, _config(), part, resume=True, progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(UserError, match="no checkpoint"):
        train_translation(data, MODEL, _config(), tmp_path / "none", resume=True, progress=False)


def test_training_lowers_the_validation_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path / "cache"))
    data = load_parallel(str(make_parallel(tmp_path / "data")), "en", "de")
    out = tmp_path / "run"
    train_translation(data, MODEL, _config(steps=40, eval_every=20, lr=3e-3), out, progress=False)
    history = torch.load(next((out / "checkpoints").iterdir()) / "train_state.pt",
                         weights_only=False)["history"]  # fmt: skip
    valid = [r["valid_loss"] for r in history if "valid_loss" in r]
    assert len(valid) == 2 and valid[1] < valid[0]
