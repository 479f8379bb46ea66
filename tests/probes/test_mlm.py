"""Masked-token evaluation of encoders (extrapos.probes.mlm) and `extrapos eval` of mlm runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.data.tokenizers import BYTE_MASK_ID
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.mlm import evaluate_mlm_lengths, masked_stream
from extrapos.training.mlm import IGNORE_INDEX

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(600)
)
TINY = ["--n-layer", "1", "--n-head", "2", "--d-model", "32", "--eval-every", "0"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A trained byte-level mlm run, a bpe one and an lm run, on a small repetitive text."""
    root = tmp_path_factory.mktemp("mlm")
    (root / "text.txt").write_text(TEXT)
    data = ["--data", str(root / "text.txt"), "--train-len", "16"]
    mlm = ["train", "--objective", "mlm", "--encoding", "rope", *data, *TINY]
    assert main([*mlm, "--steps", "300", "--lr", "5e-3", "--out", str(root / "mlm")]) == 0
    bpe = ["--tokenizer", "bpe", "--vocab-size", "300", "--steps", "2"]
    assert main([*mlm, *bpe, "--out", str(root / "bpe")]) == 0
    lm = ["train", "--encoding", "rope", *data, *TINY, "--steps", "2"]
    assert main([*lm, "--out", str(root / "lm")]) == 0
    return root


def test_eval_of_an_mlm_run_writes_masked_accuracy_and_ppl_per_length(runs, capsys) -> None:
    out = runs / "eval.json"
    argv = ["eval", str(runs / "mlm"), "--lengths", "16,64,256", "--split", "train"]
    assert main([*argv, "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["objective"] == "mlm" and payload["mask_seed"] == 0
    records = payload["results"]
    assert [r["length"] for r in records] == [16, 64, 256]
    for r in records:
        assert {"mlm_accuracy", "mlm_ppl", "masked_tokens"} <= set(r)
        assert 0 <= r["mlm_accuracy"] <= 1 and 1 <= r["mlm_ppl"] < 300
    # every length scores the same masked tokens
    assert len({r["masked_tokens"] for r in records}) == 1 and records[0]["masked_tokens"] > 100
    # above chance at the trained length: chance = the most common masked token's share
    config = json.loads((runs / "mlm" / "config.json").read_text())
    assert config["model"]["causal"] is False and config["train"]["objective"] == "mlm"
    from extrapos.data import ByteTokenizer, load_corpus

    tokens = load_corpus(str(runs / "text.txt")).tokens("train", ByteTokenizer())
    _, targets = masked_stream(tokens, [16, 64, 256], 256, BYTE_MASK_ID)
    picked = targets[targets != IGNORE_INDEX]
    assert picked.numel() == records[0]["masked_tokens"]
    chance = torch.bincount(picked).max().item() / picked.numel()
    assert records[0]["mlm_accuracy"] > chance + 0.1, (records[0]["mlm_accuracy"], chance)
    assert "masked accuracy" in capsys.readouterr().out


def test_the_mask_seed_changes_the_selection_and_is_recorded(runs) -> None:
    a, b = runs / "s0.json", runs / "s1.json"
    base = ["eval", str(runs / "mlm"), "--lengths", "16", "--split", "train"]
    assert main([*base, "--out", str(a)]) == 0
    assert main([*base, "--mask-seed", "1", "--out", str(b)]) == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert rb["mask_seed"] == 1 and rb["results"][0]["mask_seed"] == 1
    assert ra["results"][0]["nll_sum"] != rb["results"][0]["nll_sum"]


def test_a_bpe_mlm_run_has_a_mask_token_and_evaluates(runs) -> None:
    config = json.loads((runs / "bpe" / "config.json").read_text())
    tokenizer = json.loads((runs / "bpe" / "tokenizer.json").read_text())
    assert [t["content"] for t in tokenizer["added_tokens"]] == ["[MASK]"]
    assert config["model"]["vocab_size"] == config["tokenizer"]["vocab_size"]
    assert tokenizer["added_tokens"][0]["id"] == config["model"]["vocab_size"] - 1
    out = runs / "bpe.json"
    assert main(["eval", str(runs / "bpe"), "--lengths", "16,32", "--out", str(out)]) == 0
    assert all(r["mlm_ppl"] > 1 for r in json.loads(out.read_text())["results"])


@pytest.mark.parametrize(
    ("run", "flags", "message"),
    [
        ("mlm", ["--protocol", "sliding"], "--protocol sliding apply to lm runs only"),
        ("mlm", ["--per-position", "x.png"], "--per-position apply to lm runs only"),
        ("lm", ["--mask-seed", "3"], "--mask-seed applies to mlm runs"),
    ],
)
def test_eval_refuses_flags_of_the_other_objective(runs, capsys, run, flags, message) -> None:
    assert main(["eval", str(runs / run), "--lengths", "16", *flags]) == 2
    assert message in capsys.readouterr().err


def test_generate_refuses_an_mlm_run(runs, capsys) -> None:
    assert main(["generate", str(runs / "mlm"), "--prompt", "the"]) == 2
    err = capsys.readouterr().err
    assert "mlm" in err and "cannot generate" in err


def encoder(**kw) -> GPT:
    torch.manual_seed(0)
    config = {"vocab_size": 256, "n_layer": 1, "n_head": 2, "d_model": 16, "causal": False}
    return GPT(GPTConfig(**{"encoding": "alibi", **config, **kw})).eval()


def test_every_length_scores_the_same_targets_and_a_seed_is_reproducible() -> None:
    tokens = torch.randint(0, 200, (5000,), generator=torch.Generator().manual_seed(0))
    model = encoder()
    a = evaluate_mlm_lengths(model, tokens, [8, 32, 128], mask_id=BYTE_MASK_ID)
    b = evaluate_mlm_lengths(model, tokens, [8, 32, 128], mask_id=BYTE_MASK_ID)
    assert a == b
    assert {r["masked_tokens"] for r in a} == {a[0]["masked_tokens"]}
    assert a[0]["windows"] == 4992 // 8 and a[2]["windows"] == 4992 // 128
    c = evaluate_mlm_lengths(model, tokens, [8], mask_id=BYTE_MASK_ID, seed=7)
    assert c[0]["nll_sum"] != a[0]["nll_sum"]


def test_a_causal_model_and_a_short_learned_table() -> None:
    tokens = torch.randint(0, 200, (600,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="needs an encoder"):
        evaluate_mlm_lengths(encoder(causal=True), tokens, [8], mask_id=BYTE_MASK_ID)
    learned = encoder(encoding="learned", encoding_params={"max_len": 16})
    records = evaluate_mlm_lengths(learned, tokens, [16, 64], mask_id=BYTE_MASK_ID)
    assert records[0]["mlm_ppl"] > 1
    assert records[1]["mlm_ppl"] is None and "max_len=16" in records[1]["error"]
