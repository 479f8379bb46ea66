"""Divergence and non-finite numbers: a clear one-line error and exit 2, never a crash, a
"ppl nan" with exit 0, or invalid JSON; the advice given is a command the tool accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from extrapos.cli import main

TINY = ["--steps", "2", "--train-len", "16", "--n-layer", "1", "--d-model", "32"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nf") / "run"
    assert main(["train", "--encoding", "rope", *TINY, "--out", str(out)]) == 0
    return out


def _with_weights(run: Path, tmp: Path, change) -> Path:
    import shutil

    copy = tmp / "changed"
    shutil.copytree(run, copy)
    weights = load_file(copy / "model.safetensors")
    save_file({k: change(v) for k, v in weights.items()}, copy / "model.safetensors")
    return copy


@pytest.mark.parametrize(
    "change", [lambda w: w * 1e4, lambda w: torch.full_like(w, float("nan"))], ids=["huge", "nan"]
)
def test_eval_and_generate_of_broken_weights_exit_2(run, tmp_path, capsys, change):
    broken = _with_weights(run, tmp_path, change)
    out = tmp_path / "r.json"
    assert main(["eval", str(broken), "--lengths", "16", "--out", str(out)]) == 2
    assert "perplexity is not a finite number" in _err(capsys)
    assert not out.exists()
    code = main(["generate", str(broken), "--prompt", "ab", "--max-new-tokens", "3"])
    if code != 0:  # huge finite weights may still give finite logits
        assert code == 2 and "non-finite logits" in _err(capsys)


def test_a_diverging_training_stops_and_the_advice_works(tmp_path, capsys, monkeypatch):
    from extrapos.training import lm

    real = lm._lm_loss
    monkeypatch.setattr(lm, "_lm_loss", lambda logits, y: real(logits, y) * 100)  # ~550 > 55
    out = tmp_path / "run"
    assert main(["train", "--encoding", "rope", *TINY, "--out", str(out)]) == 2
    err = _err(capsys)
    assert "the run diverged and stopped" in err and "adding --overwrite" in err
    monkeypatch.setattr(lm, "_lm_loss", real)
    # the advice: a lower --lr with --overwrite (a resume would keep the run's lr)
    assert main(["train", "--encoding", "rope", *TINY, "--lr", "1e-3", "--overwrite",
                 "--out", str(out)]) == 0  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), [("--weight-decay", "nan"), ("--grad-clip", "nan"),
                                             ("--lr", "inf"), ("--min-lr-ratio", "nan")])  # fmt: skip
def test_nan_hyper_parameters_are_named(tmp_path, capsys, flag, value):
    argv = ["train", "--encoding", "rope", *TINY, flag, value, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert f"train.{flag[2:].replace('-', '_')} must be a finite number" in _err(capsys)
