"""The lm-evaluation-harness model: rolling log-likelihood is `extrapos eval`'s nonoverlap
protocol, loglikelihood agrees with it, and `extrapos lm-eval` runs a local task offline."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

pytest.importorskip("lm_eval")

from extrapos.cli import main  # noqa: E402
from extrapos.data.tokenizers import ByteTokenizer  # noqa: E402
from extrapos.integrations.lm_eval import ExtraposLM  # noqa: E402
from extrapos.models.gpt import GPT, GPTConfig  # noqa: E402
from extrapos.probes.perplexity import perplexity  # noqa: E402


class _Request:
    def __init__(self, *args):
        self.args = args


def _model(encoding: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, d_model=32, encoding=encoding)).eval()
    with torch.no_grad():  # weights far from init, so a wrong window or offset shows
        for p in model.parameters():
            p.mul_(3.0)
    model.tokenizer = ByteTokenizer()
    return model


def _text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefgh ij") for _ in range(n))


@torch.no_grad()
@pytest.mark.parametrize("encoding", ["rope", "alibi", "sinusoidal", "cope"])
def test_rolling_equals_nonoverlap_perplexity(encoding):
    model, length = _model(encoding), 16
    text = _text(1 + 5 * length)
    lm = ExtraposLM(model=model, tokenizer=ByteTokenizer(), max_length=length)
    (total,) = lm.loglikelihood_rolling([_Request(text)], disable_tqdm=True)
    ref = perplexity(model, model.tokenizer.encode(text), length)
    assert ref["tokens"] == 5 * length
    assert math.isclose(-total, ref["nll_sum"], rel_tol=1e-5)


@torch.no_grad()
def test_rolling_tail_and_loglikelihood_agree_with_the_full_forward():
    model, length = _model("alibi"), 16
    text = _text(40)  # 39 targets: two full windows and a tail of 7
    lm = ExtraposLM(model=model, tokenizer=ByteTokenizer(), max_length=length)
    (total,) = lm.loglikelihood_rolling([_Request(text)], disable_tqdm=True)
    tokens = model.tokenizer.encode(text).tolist()
    expected = 0.0
    for i in range(1, len(tokens)):  # each target from its own window's context
        start = ((i - 1) // length) * length if i <= 2 * length else len(tokens) - 1 - length
        ctx = tokens[start:i]
        logp = torch.log_softmax(model(torch.tensor([ctx]))[0, -1], -1)
        expected += float(logp[tokens[i]])
    assert math.isclose(total, expected, rel_tol=1e-5)
    # loglikelihood of a continuation = the sum of its tokens' log-probs given everything before
    ll, greedy = lm.loglikelihood([_Request(text[:10], text[10:14])], disable_tqdm=True)[0]
    logp = torch.log_softmax(model(torch.tensor([tokens[:13]]))[0], -1)
    assert math.isclose(ll, float(sum(logp[j - 1, tokens[j]] for j in range(10, 14))), rel_tol=1e-5)
    assert isinstance(greedy, bool)


def test_generate_until_stops_at_the_stop_string():
    model = _model("rope")
    lm = ExtraposLM(model=model, tokenizer=ByteTokenizer(), max_length=32)
    (free,) = lm.generate_until([_Request("abc", {"max_gen_toks": 12})], disable_tqdm=True)
    assert len(free) > 0
    stop = free[len(free) // 2]
    (cut,) = lm.generate_until(
        [_Request("abc", {"until": [stop], "max_gen_toks": 12})], disable_tqdm=True
    )
    assert cut == free[: free.index(stop)]


@pytest.mark.slow
def test_lm_eval_cli_on_a_local_task_matches_extrapos_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "data"
    data.mkdir()
    length = 32
    doc = _text(1 + 4 * length, seed=1)
    (data / "train.txt").write_text(_text(6000, seed=2))
    (data / "valid.txt").write_text(_text(800, seed=3))
    (data / "test.txt").write_text(doc)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": doc}) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local.yaml").write_text(
        "task: extrapos_test_rolling\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'docs.jsonl'}\ntest_split: test\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
    )
    run = tmp_path / "run"
    args = ["--data", str(data), "--train-len", str(length), "--steps", "5", "--n-layer", "2"]
    assert main(["train", "--encoding", "alibi", *args, "--d-model", "32", "--n-head", "2",
                 "--out", str(run)]) == 0  # fmt: skip
    assert main(["eval", str(run), "--data", str(data), "--lengths", str(length),
                 "--out", str(tmp_path / "eval.json")]) == 0  # fmt: skip
    out = tmp_path / "lm.json"
    assert main(["lm-eval", str(run), "--tasks", "extrapos_test_rolling",
                 "--include-path", str(tasks), "--out", str(out)]) == 0  # fmt: skip
    ours = json.loads((tmp_path / "eval.json").read_text())["results"][0]
    harness = json.loads(out.read_text())
    (sample,) = harness["samples"]["extrapos_test_rolling"]
    loglik = (
        float(sample["resps"][0][0])
        if isinstance(sample["resps"][0], list)
        else float(sample["resps"][0])
    )
    rolling_ppl = math.exp(-loglik / (len(doc) - 1))  # the first byte has no context
    assert ours["tokens"] == len(doc) - 1
    assert math.isclose(rolling_ppl, ours["ppl"], rel_tol=1e-3)
    byte_ppl = harness["results"]["extrapos_test_rolling"]["byte_perplexity,none"]
    assert math.isclose(byte_ppl, math.exp(-loglik / len(doc)), rel_tol=1e-6)
