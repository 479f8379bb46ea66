"""Stock `lm_eval --model hf` on an exported checkpoint: the tokenizer has BOS and EOS, so
rolling log-likelihood (which conditions the first token on BOS) runs and is right."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from extrapos.data.tokenizers import ByteTokenizer  # noqa: E402
from extrapos.hf.export import BOS_BYTE, EOS_BYTE, export_hf  # noqa: E402
from extrapos.models.gpt import GPT, GPTConfig  # noqa: E402
from extrapos.training.run_dir import save_model  # noqa: E402


class _Request:
    def __init__(self, *args):
        self.args = args


@pytest.mark.slow
@torch.no_grad()
def test_stock_lm_eval_hf_scores_an_export(tmp_path):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, n_layer=2, n_head=2, d_model=32, encoding="rope")
    model = GPT(config).eval()
    run = tmp_path / "run"
    save_model(run, model, {"model": config.to_dict(), "train": {"train_len": 64}}, ByteTokenizer())
    export_hf(run, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_BYTE, EOS_BYTE)
    assert tok("ab")["input_ids"] == [97, 98]  # no special token added to text

    lm = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", batch_size=1, max_length=64)
    text = "the quick brown fox jumps over the lazy dog"
    (rolling,) = lm.loglikelihood_rolling([_Request(text)], disable_tqdm=True)
    ids = [BOS_BYTE, *text.encode()]
    logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], -1)
    expected = float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
    assert math.isclose(rolling, expected, rel_tol=1e-4)
