"""Attention diagnostics against hand-computed cases and the model's own attention output;
per-position loss JSON/plot; `extrapos eval --per-position/--csv` and `extrapos diagnose`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from extrapos.cli import main
from extrapos.core.errors import UserError
from extrapos.core.stats import geometric_bins
from extrapos.data import ByteTokenizer
from extrapos.encodings import list_encodings
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.diagnostics import (
    attention_probabilities,
    attention_stats,
    distance_bins,
    plot_attention_stats,
    plot_position_nll,
    write_position_nll,
)
from extrapos.probes.perplexity import perplexity
from extrapos.training.run_dir import save_model


def tiny(encoding: str, n_layer: int = 2) -> GPT:
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=32, n_layer=n_layer, n_head=2, d_model=16, encoding=encoding)
    ).eval()


def test_distance_bins():
    assert distance_bins(1) == [(0, 1)]
    assert distance_bins(8) == [(0, 1), (1, 2), (2, 4), (4, 8)]
    assert distance_bins(9) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16)]


def test_uniform_attention_matches_hand_computation():
    """NoPE with zero q/k weights: every score is 0, so query i attends uniformly to keys
    0..i: entropy log(i+1), mean distance i/2, sink mass 1/(i+1)."""
    model = tiny("nope", n_layer=1)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:32].zero_()  # the q and k rows of W_qkv
    n = 10
    tokens = torch.randint(0, 32, (3 * n,), generator=torch.Generator().manual_seed(0))
    records = attention_stats(model, tokens, [n], n_windows=3, query_chunk=4)
    assert len(records) == 2  # 1 layer x 2 heads
    entropy = sum(math.log(i + 1) for i in range(n)) / n
    hist = [0.0] * len(distance_bins(n))
    for i in range(n):
        for j in range(i + 1):
            d = i - j
            hist[0 if d == 0 else int(math.log2(d)) + 1] += 1 / (i + 1) / n
    for r in records:
        assert r["windows"] == 3
        assert r["entropy"] == pytest.approx(entropy, abs=1e-5)
        assert r["uniform_entropy"] == pytest.approx(entropy)
        assert r["mean_distance"] == pytest.approx((n - 1) / 4, abs=1e-5)
        assert r["sink_mass"] == pytest.approx(sum(1 / (i + 1) for i in range(n)) / n, abs=1e-6)
        assert r["distance_hist"] == pytest.approx(hist, abs=1e-6)
    probs = attention_probabilities(model, tokens[None, :n])[0]
    expected = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    torch.testing.assert_close(probs[0, 0], expected)


@pytest.mark.parametrize("encoding", list_encodings())
def test_recomputed_attention_reproduces_the_layers(encoding):
    """check=True (the default) verifies W_out(P v) against each layer's real output; rows of
    P are causal distributions; chunking the queries changes nothing."""
    model = tiny(encoding)
    with torch.no_grad():  # zero-initialized tables (t5, …) would hide a missing bias
        for p in model.encoding.parameters():
            p.add_(0.5 * torch.randn_like(p))
    idx = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(1))
    enc = model.encoding
    if "attention" in enc.sites and not hasattr(enc, "attention_probabilities"):
        with pytest.raises(UserError, match="computes its own attention"):
            attention_probabilities(model, idx)
        return
    maps = attention_probabilities(model, idx)
    assert len(maps) == 2 and maps[0].shape == (2, 2, 24, 24)
    for p in maps:
        torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 24))
        assert (p.triu(diagonal=1) == 0).all()
    records = attention_stats(model, idx.flatten(), [24], n_windows=2, query_chunk=5)
    whole = attention_stats(model, idx.flatten(), [24], n_windows=2, query_chunk=24)
    for a, b in zip(records, whole, strict=True):
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-5)
        assert sum(a["distance_hist"]) == pytest.approx(1.0, abs=1e-5)


def test_alibi_attends_closer_than_nope():
    tokens = torch.randint(0, 32, (128,), generator=torch.Generator().manual_seed(2))

    def model(encoding: str) -> GPT:
        torch.manual_seed(0)
        return GPT(GPTConfig(vocab_size=32, n_layer=1, n_head=8, d_model=32, encoding=encoding))

    near = attention_stats(model("alibi"), tokens, [64], n_windows=2)
    far = attention_stats(model("nope"), tokens, [64], n_windows=2)
    # ALiBi's steepest head (slope 1/2 with 8 heads) concentrates on recent tokens
    assert min(r["mean_distance"] for r in near) < min(r["mean_distance"] for r in far) / 2


def test_unmodelled_attention_fails_loudly():
    model = tiny("alibi")
    model.blocks[1].attn.register_forward_hook(lambda mod, args, out: out * 2)
    with pytest.raises(UserError, match="cannot reproduce layer 1"):
        attention_stats(model, torch.randint(0, 32, (16,)), [16], n_windows=1)


def test_bad_inputs():
    model = tiny("alibi")
    with pytest.raises(UserError, match="fewer than the length"):
        attention_stats(model, torch.randint(0, 32, (10,)), [16])
    with pytest.raises(UserError, match="1-D"):
        attention_stats(model, torch.randint(0, 32, (2, 10)), [4])


def test_attention_plot(tmp_path):
    tokens = torch.randint(0, 32, (64,), generator=torch.Generator().manual_seed(0))
    records = attention_stats(tiny("rope"), tokens, [8, 16, 32], n_windows=1)
    data = plot_attention_stats(records, tmp_path / "att.png", title="rope")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "att.png").read_bytes() == data


def test_geometric_bins_average():
    xs, ys = geometric_bins([2.0] * 100, per_octave=2)
    assert ys == pytest.approx([2.0] * len(ys)) and xs == sorted(xs)
    xs, ys = geometric_bins([1.0, 3.0, 5.0, None], per_octave=1)  # x = 1 | 2, 3 | (4)
    assert ys == [1.0, 4.0] and xs == pytest.approx([2**0.5, 2**1.5])


def test_position_nll_json_and_plot(tmp_path):
    model = tiny("alibi")
    tokens = torch.randint(0, 32, (200,), generator=torch.Generator().manual_seed(3))
    records = [perplexity(model, tokens, n) for n in (16, 32)]
    records.append({"length": 64, "ppl": None, "error": "too long"})  # failed lengths skipped
    write_position_nll(records, tmp_path / "pos.json", train_len=16)
    payload = json.loads((tmp_path / "pos.json").read_text())
    assert payload["train_len"] == 16
    assert [c["length"] for c in payload["curves"]] == [16, 32]
    assert payload["curves"][1]["position_nll"] == pytest.approx(records[1]["position_nll"])
    data = plot_position_nll(records, tmp_path / "pos.png", train_len=16)
    assert data.startswith(b"\x89PNG") and (tmp_path / "pos.png").stat().st_size > 0
    with pytest.raises(UserError, match="no per-position"):
        plot_position_nll([records[-1]])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A saved (untrained) tiny byte-level run whose corpus is a small text file."""
    root = tmp_path_factory.mktemp("diag")
    text = root / "text.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps.\n" for i in range(400)))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, n_layer=1, n_head=2, d_model=16, encoding="alibi")
    record = {"model": config.to_dict(), "train": {"train_len": 32}, "data": {"name": str(text)}}
    save_model(root / "run", GPT(config), record, ByteTokenizer())
    return root / "run"


def test_eval_writes_csv_and_per_position(run_dir, tmp_path, capsys):
    png = tmp_path / "pos.png"
    argv = ["eval", str(run_dir), "--lengths", "32,64", "--max-tokens", "256"]
    argv += ["--out", str(tmp_path / "e.csv"), "--csv", str(tmp_path / "f.csv")]
    assert main([*argv, "--per-position", str(png)]) == 0
    for name in ("e.csv", "f.csv"):
        lines = (tmp_path / name).read_text().splitlines()
        assert lines[0].startswith("length,protocol,stride,ppl") and len(lines) == 3
        assert "position_nll" not in lines[0]
    payload = json.loads((tmp_path / "pos.positions.json").read_text())
    assert payload["train_len"] == 32 and len(payload["curves"]) == 2
    assert png.read_bytes().startswith(b"\x89PNG")
    assert main(["eval", str(run_dir), "--lengths", "32", "--max-tokens", "64",
                 "--out", str(tmp_path / "e.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "e.json").read_text())["results"][0]["length"] == 32


def test_diagnose_command(run_dir, tmp_path, capsys):
    argv = ["diagnose", str(run_dir), "--lengths", "16,64", "--windows", "1"]
    argv += ["--plot", str(tmp_path / "a.png"), "--out", str(tmp_path / "a.json")]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "layer 0 head 1" in text and "L=64" in text
    records = json.loads((tmp_path / "a.json").read_text())["results"]
    assert {(r["layer"], r["head"], r["length"]) for r in records} == {
        (0, h, n) for h in (0, 1) for n in (16, 64)
    }
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
