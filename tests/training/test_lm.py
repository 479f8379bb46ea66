"""Training loop, run directories and resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import extrapos.training.lm as train_module
from extrapos.core.errors import UserError
from extrapos.data import Corpus, build_tokenizer
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.training.config import EvalConfig, RunConfig
from extrapos.training.lm import LOG_COLUMNS, TrainConfig, lr_factor, train, validate
from extrapos.training.run_dir import (
    TRAIN_STATE,
    WEIGHTS,
    foreign_entries,
    list_checkpoints,
    load_config,
    load_model,
    load_run,
    remove_partial_checkpoints,
    save_checkpoint,
    step_dir,
)

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(200)
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        "log.csv",
        "checkpoints",
    }
    assert (step_dir(tmp_path, 6) / TRAIN_STATE).is_file()
    loaded = load_model(tmp_path)
    x = torch.randint(0, 256, (2, 20))
    torch.testing.assert_close(loaded(x), result.model(x))
    assert load_run(tmp_path).tokenizer.name == "byte"
    assert GPT.from_checkpoint(tmp_path).config == loaded.config
    assert not hasattr(loaded, "tokenizer")  # the model does not know its run directory
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries
    # the resolved config is itself a config file for the next run
    saved = json.loads((tmp_path / "config.json").read_text())
    run = RunConfig.from_dict(saved)
    assert run.train == config() and run.model == tiny("alibi")
    assert saved["data"]["content_hash"] == corpus.content_hash


def test_keep_last_and_step_checkpoints(tmp_path, corpus):
    tok = build_tokenizer("byte")
    result = train(
        tiny(), config(save_every=2, keep_last=2), corpus, tok, run_dir=tmp_path, progress=False
    )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    last = step_dir(tmp_path, 6)
    assert os.path.samefile(last / WEIGHTS, tmp_path / WEIGHTS)  # published by hard link
    x = torch.randint(0, 256, (1, 12))
    torch.testing.assert_close(load_model(step_dir(tmp_path, 6))(x), result.model(x))
    earlier = load_model(step_dir(tmp_path, 4))  # every step folder is a run directory
    assert not torch.equal(earlier(x), result.model(x))

    train(
        tiny(),
        config(save_every=2, keep_last=0),
        corpus,
        tok,
        run_dir=tmp_path,
        progress=False,
        overwrite=True,
    )
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4, 6]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_killed_while_pruning_an_old_checkpoint_leaves_a_resumable_run(
    tmp_path, corpus, monkeypatch
):
    """`rmtree` deletes file by file: a run killed inside it must not leave a half-deleted
    step folder under its own name (resume would refuse it as someone else's files)."""
    tok = build_tokenizer("byte")
    train(tiny(), config(steps=4, save_every=2), corpus, tok, run_dir=tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]

    def killed_midway(path, *args, **kwargs):
        (path / TRAIN_STATE).unlink()  # the first file gone, then the kill
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", killed_midway)
        with pytest.raises(_Killed):
            save_checkpoint(tmp_path, 6, load_model(tmp_path), load_config(tmp_path), tok, {})
    assert foreign_entries(tmp_path) == []
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6]
    remove_partial_checkpoints(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000006"]


def test_fresh_run_in_an_old_folder_is_refused_unless_overwrite(tmp_path, corpus):
    """Another run's checkpoints are never deleted silently: refused, or --overwrite."""
    tok = build_tokenizer("byte")
    train(
        tiny(),
        config(steps=4, save_every=1, keep_last=0),
        corpus,
        tok,
        run_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(
        UserError, match=r"up to step 4\); pass --resume to continue it, --overwrite"
    ):
        train(tiny(), config(steps=2), corpus, tok, run_dir=tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2, 3, 4]  # untouched
    train(tiny(), config(steps=2), corpus, tok, run_dir=tmp_path, progress=False, overwrite=True)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert len(read_log(tmp_path)) == 2


def read_log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_log_csv_and_periodic_validation(tmp_path, corpus):
    result = train(
        tiny(),
        config(steps=6),
        corpus,
        build_tokenizer("byte"),
        run_dir=tmp_path,
        progress=False,
        eval_config=EvalConfig(every=2, max_tokens=256),
    )
    rows = read_log(tmp_path)
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses, rel=1e-5)
    assert [int(r["tokens"]) for r in rows] == [64 * k for k in range(1, 7)]
    assert all(float(r["grad_norm"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert [s for s, _ in result.valid] == [2, 4, 6]
    assert [r["valid_loss"] != "" for r in rows] == [False, True, False, True, False, True]
    # the last validation is the final model's loss on the same fixed windows
    valid = corpus.token_array("valid", build_tokenizer("byte"))
    expected = validate(result.model, valid, 16, 256, batch_size=4)
    assert result.valid[-1][1] == pytest.approx(expected, rel=1e-6)
    assert float(rows[-1]["valid_ppl"]) == pytest.approx(math.exp(expected), rel=1e-5)


def test_gradient_accumulation_equals_the_full_batch(corpus):
    tok = build_tokenizer("byte")
    whole = train(tiny(), config(), corpus, tok, progress=False)
    split = train(tiny(), config(grad_accum=4), corpus, tok, progress=False)
    # same windows, same mean loss; only the float summation order differs
    assert split.losses == pytest.approx(whole.losses, abs=1e-5)
    for (name, a), (_, b) in zip(
        whole.model.state_dict().items(), split.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(UserError, match="divisible"):
        config(grad_accum=3)


def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_weights_fp32(corpus, monkeypatch):
    seen = []
    real_linear = torch.nn.Linear.forward

    def spy(self, x):
        out = real_linear(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    tok = build_tokenizer("byte")
    bf16 = train(tiny("alibi"), config(precision="bf16"), corpus, tok, progress=False)
    assert torch.bfloat16 in seen
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    seen.clear()
    fp32 = train(tiny("alibi"), config(), corpus, tok, progress=False)
    assert set(seen) == {torch.float32}
    # same data and init: bf16 rounding moves the loss a little, not a lot
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], abs=0.05)
    assert bf16.losses != fp32.losses


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(
    tmp_path, corpus, monkeypatch
):
    calls = {"n": 0}
    real_loss = train_module._lm_loss

    def nan_on_fifth(logits, targets):
        calls["n"] += 1
        loss = real_loss(logits, targets)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_module, "_lm_loss", nan_on_fifth)
    tok = build_tokenizer("byte")
    with pytest.raises(UserError, match=r"loss became nan at step 5.*checkpoint.*step_00000004"):
        train(tiny(), config(save_every=2), corpus, tok, run_dir=tmp_path, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]
    rows = read_log(tmp_path)
    assert rows[-1]["step"] == "5" and rows[-1]["loss"] == "nan"
    # the kept checkpoint resumes: the rest of the run is finite again
    monkeypatch.setattr(train_module, "_lm_loss", real_loss)
    resumed = train(
        tiny(), config(save_every=2), corpus, tok, run_dir=tmp_path, resume=True, progress=False
    )
    assert len(resumed.losses) == 6 and all(math.isfinite(v) for v in resumed.losses)
    assert [int(r["step"]) for r in read_log(tmp_path)] == [1, 2, 3, 4, 5, 6]


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
    with pytest.raises(UserError, match=r"another train\.lr \(saved .*, now 0\.5\)"):
        train(tiny(), config(lr=0.5), corpus, tok, run_dir=tmp_path, resume=True, progress=False)
    other_model = GPTConfig(**{**tiny().to_dict(), "n_layer": 3})
    with pytest.raises(UserError, match=r"another model\.n_layer \(saved 1, now 3\)"):
        train(other_model, config(), corpus, tok, run_dir=tmp_path, resume=True, progress=False)


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


# ----------------------------------------------------------------------------- real processes


def _cli(run_dir, data, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "extrapos",
        "train",
        "--encoding",
        "rope",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--d-model",
        "16",
        "--train-len",
        "16",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--data",
        str(data),
        "--out",
        str(run_dir),
        *extra,
    ]


def _single_thread_env() -> dict[str, str]:
    # one thread: the same kernels in the same order in every process, so weights are bitwise equal
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.txt"
    path.write_text(TEXT * 3, encoding="utf-8")
    return path


def test_sigkilled_at_random_points_then_resumed_gives_the_same_weights(tmp_path, text_file):
    """A real `extrapos train` SIGKILLed three times at random moments (after a new checkpoint
    plus a random delay, so sometimes mid-step, sometimes mid-save), each time `--resume`d,
    ends with exactly the weights and log of an uninterrupted run, and no leftover files."""
    steps = 200
    args = ("--steps", str(steps), "--save-every", "3")
    env = _single_thread_env()
    whole = tmp_path / "whole"
    subprocess.run(_cli(whole, text_file, *args), env=env, check=True, capture_output=True)

    rng = random.Random(20261130)
    killed = tmp_path / "killed"
    kills: list[int] = []
    for attempt in range(3):
        resume = ("--resume",) if attempt else ()
        proc = subprocess.Popen(
            _cli(killed, text_file, *args, *resume),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        last = kills[-1] if kills else 0
        deadline = time.monotonic() + 120

        def newest() -> int:
            saved = list_checkpoints(killed)
            return saved[-1][0] if saved else 0

        while newest() <= last and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
        kills.append(newest())
        assert 0 < kills[-1] < steps
    assert kills == sorted(kills) and len(set(kills)) == 3  # three different points

    subprocess.run(
        _cli(killed, text_file, *args, "--resume"), env=env, check=True, capture_output=True
    )
    a, b = load_model(whole).state_dict(), load_model(killed).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [int(r["step"]) for r in read_log(killed)] == list(range(1, steps + 1))
    assert [r["loss"] for r in read_log(killed)] == [r["loss"] for r in read_log(whole)]
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]


def test_bpe_run_saves_and_reloads_its_tokenizer(tmp_path, text_file):
    pytest.importorskip("tokenizers")
    from extrapos.cli import main
    from extrapos.data import BpeTokenizer, load_corpus
    from extrapos.probes.perplexity import perplexity

    run = tmp_path / "bpe"
    argv = _cli(run, text_file, "--steps", "3", "--tokenizer", "bpe", "--vocab-size", "300")[3:]
    assert main(argv) == 0
    loaded = load_run(run)
    model, tokenizer = loaded.model, loaded.tokenizer
    assert isinstance(tokenizer, BpeTokenizer) and model.config.vocab_size == 300
    corpus = load_corpus(text_file)
    assert tokenizer == BpeTokenizer.train(corpus.splits["train"], 300)
    tokens = corpus.tokens("test", tokenizer)
    result = perplexity(model, tokens, length=16, token_bytes=tokenizer.token_bytes())
    assert 0 < result["bits_per_byte"] < 8 * math.log2(300)
    # resume reloads the saved tokenizer; another tokenizer is refused
    assert main([*argv, "--resume"]) == 0
    assert main(argv[:-4] + ["--tokenizer", "byte", "--resume"]) == 2


@pytest.mark.skipif(
    not importlib.util.find_spec("tensorboard"), reason="tensorboard not installed (optional)"
)
def test_tensorboard_scalars(tmp_path, corpus):
    train(
        tiny(),
        config(tensorboard=True),
        corpus,
        build_tokenizer("byte"),
        run_dir=tmp_path,
        progress=False,
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_missing_is_a_clear_error(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="tensorboard"):
        train(
            tiny(),
            config(tensorboard=True),
            corpus,
            build_tokenizer("byte"),
            run_dir=tmp_path,
            progress=False,
        )


@pytest.mark.slow
def test_compiled_training_matches_eager(corpus):
    tok = build_tokenizer("byte")
    eager = train(tiny("alibi"), config(steps=3), corpus, tok, progress=False)
    compiled = train(tiny("alibi"), config(steps=3, compile=True), corpus, tok, progress=False)
    assert compiled.losses == pytest.approx(eager.losses, abs=1e-4)
