"""Training loop, run directories and resume."""

from __future__ import annotations

import pytest
import torch

import extrapos.train as train_module
from extrapos.checkpoint import TRAIN_STATE, WEIGHTS, load_model
from extrapos.data import Corpus, build_tokenizer
from extrapos.errors import UserError
from extrapos.model import GPTConfig
from extrapos.train import TrainConfig, lr_factor, train

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(200)
)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus.from_splits("toy", {"train": [TEXT], "valid": [TEXT[:500]], "test": [TEXT[:900]]})


def tiny(encoding: str = "rope") -> GPTConfig:
    return GPTConfig(n_layer=1, n_head=2, d_model=16, encoding=encoding)


def config(**kw) -> TrainConfig:
    return TrainConfig(**{"train_len": 16, "batch_size": 4, "steps": 6, "warmup_steps": 2, **kw})


def test_loss_decreases(corpus):
    result = train(
        tiny(), config(steps=40, lr=1e-2), corpus, build_tokenizer("byte"), progress=False
    )
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first - 0.5


def test_lr_schedule_warms_up_then_decays_to_floor():
    c = config(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, c) == pytest.approx(0.1)
    assert lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(55, c) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, c) == pytest.approx(0.1)


def test_run_dir_round_trip(tmp_path, corpus):
    result = train(
        tiny("alibi"), config(), corpus, build_tokenizer("byte"), run_dir=tmp_path, progress=False
    )
    assert {p.name for p in tmp_path.iterdir()} >= {
        WEIGHTS,
        "config.json",
        "tokenizer.json",
        TRAIN_STATE,
    }
    loaded = load_model(tmp_path)
    x = torch.randint(0, 256, (2, 20))
    torch.testing.assert_close(loaded(x), result.model(x))
    assert loaded.tokenizer.name == "byte"
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_resume_reaches_the_same_weights(tmp_path, corpus, monkeypatch):
    """Interrupt after step 4 (checkpoint at step 3), resume: same final weights as one run."""
    tok = build_tokenizer("byte")
    whole = train(tiny(), config(save_every=3), corpus, tok, run_dir=tmp_path / "a", progress=False)

    real_sample, calls = train_module.sample_batch, {"n": 0}

    def crash_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_batch", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), config(save_every=3), corpus, tok, run_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(train_module, "sample_batch", real_sample)
    resumed = train(
        tiny(),
        config(save_every=3),
        corpus,
        tok,
        run_dir=tmp_path / "b",
        resume=True,
        progress=False,
    )
    assert resumed.losses == pytest.approx(whole.losses)
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_with_other_settings_refuses(tmp_path, corpus):
    tok = build_tokenizer("byte")
    train(tiny(), config(), corpus, tok, run_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="another configuration"):
        train(tiny(), config(lr=0.5), corpus, tok, run_dir=tmp_path, resume=True, progress=False)


def test_corrupt_weights_give_a_clear_error(tmp_path, corpus):
    train(tiny(), config(), corpus, build_tokenizer("byte"), run_dir=tmp_path, progress=False)
    weights = tmp_path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt"):
        load_model(tmp_path)


def test_learned_table_shorter_than_train_len_refused(corpus):
    cfg = GPTConfig(
        n_layer=1, n_head=2, d_model=16, encoding="learned", encoding_params={"max_len": 8}
    )
    with pytest.raises(UserError, match="max_len=8"):
        train(cfg, config(), corpus, build_tokenizer("byte"), progress=False)


@pytest.mark.parametrize(
    ("field", "value"), [("steps", 0), ("train_len", -1), ("lr", 0.0), ("batch_size", 0)]
)
def test_train_config_validation_names_the_field(field, value):
    with pytest.raises(UserError, match=field):
        config(**{field: value})
