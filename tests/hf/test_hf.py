"""Hugging Face interop: the RoPE config schema, eval of HF models (with RoPE patching),
export to LlamaForCausalLM, and the classic models (GPT-2, BERT, T5). Tiny random models built
from configs; nothing is downloaded."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
hf_rope = pytest.importorskip("transformers.modeling_rope_utils")
if not hasattr(hf_rope, "RopeParameters"):
    pytest.skip("these tests target the transformers v5 config schema", allow_module_level=True)

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    T5Config,
    T5ForConditionalGeneration,
)

from extrapos.cli import main  # noqa: E402
from extrapos.core.errors import UserError  # noqa: E402
from extrapos.data import ByteTokenizer, load_corpus  # noqa: E402
from extrapos.encodings import rope_inv_freq, t5_buckets  # noqa: E402
from extrapos.hf import (  # noqa: E402
    HFCausalLM,
    HFTokenizer,
    RopeConfig,
    export_hf,
    interpolate_position_embeddings,
    load_hf_model,
    patch_rope,
    rope_config_from_hf,
    rope_config_to_hf,
    t5_bias_from_hf,
)
from extrapos.hf.adapter import FallbackWarning  # noqa: E402
from extrapos.models.gpt import GPT, GPTConfig  # noqa: E402
from extrapos.probes.perplexity import evaluate_lengths, perplexity  # noqa: E402
from extrapos.training.run_dir import save_model  # noqa: E402

HEAD_DIM = 16
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)],
    "long_factor": [1.5 + 0.5 * i for i in range(HEAD_DIM // 2)],
    "original_max_position_embeddings": 16,
}
#: one dict per transformers rope_type (our schema), for a model with max_position_embeddings 32
SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
    "longrope": LONGROPE,
    "proportional": {"rope_type": "proportional", "partial_rotary_factor": 0.5},
}


def _llama_config(rope_parameters: dict[str, Any] | None = None, **kw: Any) -> LlamaConfig:
    fields = {
        "vocab_size": 64,
        "hidden_size": 2 * HEAD_DIM,
        "intermediate_size": 48,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 32,
        **kw,
    }
    if rope_parameters is not None:
        fields["rope_parameters"] = rope_parameters
    return LlamaConfig(**fields)


def _hf_inv_freq(config: Any, seq_len: int | None) -> tuple[torch.Tensor, float]:
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return hf_rope.ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


# ---------------------------------------------------------------------------------------------
# schema


@pytest.mark.parametrize("name", ["default", *SCALINGS])
def test_from_hf_matches_transformers_frequencies(name):
    scaling = SCALINGS.get(name, {"rope_type": "default"})
    config = _llama_config({**scaling, "rope_theta": 50000.0})
    rope = rope_config_from_hf(config)
    assert rope.base == 50000.0 and rope.max_position_embeddings == 32
    assert rope.rotary_dim == HEAD_DIM
    assert (rope.scaling or {"rope_type": "default"})["rope_type"] == name
    for seq_len in (8, 48):
        ours = rope_inv_freq(rope.rotary_dim, rope.base, rope.scaling, 32, seq_len=seq_len)
        theirs = _hf_inv_freq(config, seq_len)
        torch.testing.assert_close(ours[0], theirs[0].float(), rtol=1.3e-6, atol=0)
        assert ours[1] == pytest.approx(theirs[1])


@pytest.mark.parametrize("name", ["default", *SCALINGS])
@pytest.mark.parametrize("schema", ["v4", "v5"])
def test_to_hf_round_trips_through_config_objects_and_json(name, schema, tmp_path):
    scaling = SCALINGS.get(name)
    if schema == "v4" and name == "proportional":
        with pytest.raises(UserError, match="v5 only"):
            rope_config_to_hf(1e4, HEAD_DIM, scaling, 32, head_dim=HEAD_DIM, schema="v4")
        return
    fields = rope_config_to_hf(500000.0, HEAD_DIM, scaling, 32, head_dim=HEAD_DIM, schema=schema)
    assert ("rope_parameters" in fields) == (schema == "v5")
    config = _llama_config(**fields)  # transformers v5 takes both schemas
    back = rope_config_from_hf(config)
    expected = dict(scaling) if scaling else None
    if name in ("yarn", "llama3", "longrope"):  # transformers fills it in (same value here)
        expected.setdefault("original_max_position_embeddings", 32)
    assert back == RopeConfig(500000.0, HEAD_DIM, expected, 32)
    # the raw dict, as in a config.json of either schema, reads the same
    raw = {"hidden_size": 2 * HEAD_DIM, "num_attention_heads": 2, **fields}
    assert rope_config_from_hf(raw) == back
    config.save_pretrained(tmp_path)
    assert rope_config_from_hf(json.loads((tmp_path / "config.json").read_text())) == back


def test_from_hf_reads_legacy_keys_and_model_defaults():
    v4 = {"rope_theta": 1000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    raw = {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 100, **v4}
    assert rope_config_from_hf(raw) == RopeConfig(
        1000.0, 16, {"rope_type": "linear", "factor": 2.0}, 100
    )
    assert rope_config_from_hf({**raw, "model_type": "llama"}) == rope_config_from_hf(raw)
    # GPT-NeoX's own names and default (rotary_pct 0.25), through transformers' config class
    neox = {"model_type": "gpt_neox", "hidden_size": 64, "num_attention_heads": 4}
    assert rope_config_from_hf(neox).rotary_dim == 4
    assert rope_config_from_hf({**neox, "rotary_pct": 0.5, "rotary_emb_base": 100}) == (
        RopeConfig(100.0, 8, None, 2048)
    )
    assert rope_config_from_hf(PhiConfig(hidden_size=64, num_attention_heads=4)).rotary_dim == 8


def test_partial_rotary_round_trip_matches_transformers():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    fields = rope_config_to_hf(10000.0, 8, yarn, 32, head_dim=16)
    assert fields["rope_parameters"]["partial_rotary_factor"] == 0.5
    config = PhiConfig(hidden_size=64, num_attention_heads=4, **fields)
    rope = rope_config_from_hf(config)
    assert rope == RopeConfig(10000.0, 8, yarn, 32)
    ours = rope_inv_freq(8, 10000.0, rope.scaling, 32, seq_len=64)
    theirs = hf_rope.ROPE_INIT_FUNCTIONS["yarn"](config, None, seq_len=64)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1.3e-6, atol=0)
    assert ours[1] == pytest.approx(theirs[1])


def test_ntk_is_written_as_plain_rope_with_the_same_frequencies():
    fields = rope_config_to_hf(10000.0, 16, {"rope_type": "ntk", "factor": 4.0}, head_dim=16)
    assert fields["rope_parameters"]["rope_type"] == "default"
    back = rope_config_from_hf(_llama_config(**fields))
    ours = rope_inv_freq(16, 10000.0, {"rope_type": "ntk", "factor": 4.0})[0]
    assert torch.equal(rope_inv_freq(16, back.base, back.scaling)[0], ours)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            {
                "hidden_size": 32,
                "num_attention_heads": 2,
                "rope_scaling": {"rope_type": "yarn", "factor": 2, "foo": 1},
            },
            "'foo'",
        ),
        (
            {"hidden_size": 32, "num_attention_heads": 2, "rope_scaling": {"rope_type": "magic"}},
            "unknown rope_type 'magic'",
        ),
        (
            {
                "hidden_size": 32,
                "num_attention_heads": 2,
                "rope_scaling": {"rope_type": "linear", "factor": 0.5},
            },
            "'factor'",
        ),
        (
            {
                "hidden_size": 32,
                "num_attention_heads": 2,
                "rope_parameters": {"full_attention": {"rope_type": "default"}},
            },
            "per-layer",
        ),
        (
            {
                "hidden_size": 32,
                "num_attention_heads": 2,
                "rope_theta": 1e4,
                "partial_rotary_factor": 1.5,
            },
            "partial_rotary_factor",
        ),
        ({"model_type": "gpt2", "n_embd": 32, "n_head": 2}, "no rotary"),
        ({"model_type": "llama", "hidden_size": "x"}, "rejects this llama config"),
    ],
)
def test_from_hf_errors_name_the_problem(config, match):
    with pytest.raises(UserError, match=match):
        rope_config_from_hf(config)


# ---------------------------------------------------------------------------------------------
# RoPE patching


def _pair(rope_parameters: dict[str, Any] | None) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A random Llama with plain RoPE and a copy with `rope_parameters` (same weights)."""
    torch.manual_seed(0)
    plain = LlamaForCausalLM(_llama_config()).eval()
    other = LlamaForCausalLM(_llama_config(rope_parameters)).eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


@torch.no_grad()
@pytest.mark.parametrize("name", ["default", "yarn", "longrope"])
def test_patch_without_override_keeps_the_logits(name):
    params = {**SCALINGS.get(name, {"rope_type": "default"}), "rope_theta": 10000.0}
    model = _pair(params)[1]
    idx = torch.randint(0, 64, (2, 40))
    before = model(input_ids=idx).logits
    patch = patch_rope(model)
    torch.testing.assert_close(model(input_ids=idx).logits, before, rtol=0, atol=1e-6)
    patch.remove()


@torch.no_grad()
@pytest.mark.parametrize("name", list(SCALINGS))
def test_patch_override_equals_transformers_with_that_rope(name):
    plain, reference = _pair({**SCALINGS[name], "rope_theta": 10000.0})
    idx = torch.randint(0, 64, (2, 48))  # past max_position_embeddings=32
    unpatched = plain(input_ids=idx).logits
    patch = patch_rope(plain, SCALINGS[name])
    expected = reference(input_ids=idx).logits
    torch.testing.assert_close(plain(input_ids=idx).logits, expected, rtol=0, atol=1e-5)
    if name in ("dynamic", "longrope"):  # length-dependent: recomputed per forward length
        short = idx[:, :8]
        torch.testing.assert_close(
            plain(input_ids=short).logits, reference(input_ids=short).logits, rtol=0, atol=1e-5
        )
    patch.remove()
    torch.testing.assert_close(plain(input_ids=idx).logits, unpatched, rtol=0, atol=0)


@torch.no_grad()
def test_patch_partial_rotary_gpt_neox():
    def neox(rope_parameters: dict[str, Any]) -> GPTNeoXForCausalLM:
        torch.manual_seed(0)
        config = GPTNeoXConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            rope_parameters={
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                **rope_parameters,
            },
        )
        return GPTNeoXForCausalLM(config).eval()

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    plain, reference = neox({"rope_type": "default"}), neox(yarn)
    assert patch_rope(plain, yarn).rope.rotary_dim == 8
    idx = torch.randint(0, 64, (1, 48))
    torch.testing.assert_close(
        plain(input_ids=idx).logits, reference(input_ids=idx).logits, rtol=0, atol=1e-5
    )


def test_patch_refuses_models_without_rope():
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    )
    with pytest.raises(UserError, match="no rotary"):
        patch_rope(gpt2, {"rope_type": "linear", "factor": 2.0})


# ---------------------------------------------------------------------------------------------
# export


def _run(tmp_path: Path, encoding: str, train_len: int = 16, **params: Any) -> Path:
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=256, n_layer=2, n_head=2, d_model=32, encoding=encoding, encoding_params=params
    )
    model = GPT(config)
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for block in model.blocks:
            block.norm1.weight.uniform_(0.5, 1.5)
            block.norm2.weight.uniform_(0.5, 1.5)
    run_dir = tmp_path / f"run_{encoding}_{len(list(tmp_path.iterdir()))}"
    payload = {"model": config.to_dict(), "train": {"train_len": train_len}}
    save_model(run_dir, model, payload, ByteTokenizer())
    return run_dir


EXPORT_CASES = [
    ("rope", {}),
    ("rope", {"base": 500.0, "scaling": SCALINGS["yarn"]}),
    ("rope", {"scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 16}),
    ("rope", {"scaling": {"rope_type": "ntk", "factor": 4.0}}),
    ("rope", {"scaling": SCALINGS["proportional"]}),
    ("rope", {"rotary_dim": 8}),
    ("rope", {"rotary_dim": 4, "base": 100.0, "scaling": {"rope_type": "linear", "factor": 2.0}}),
    ("rope", {"rotary_dim": 8, "scaling": {"rope_type": "ntk", "factor": 2.0}}),
    ("nope", {}),
]


@torch.no_grad()
@pytest.mark.parametrize(("encoding", "params"), EXPORT_CASES)
def test_export_logits_equal_ours(tmp_path, encoding, params):
    run_dir = _run(tmp_path, encoding, **params)
    result = export_hf(run_dir, tmp_path / "hf", check_length=24)
    assert result["max_abs_diff"] < 1e-5
    ours = GPT.from_checkpoint(run_dir).eval()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(theirs).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, 256, (2, 40))  # 2.5x the trained length
    torch.testing.assert_close(theirs(input_ids=idx).logits, ours(idx), rtol=0, atol=1e-5)


def test_export_writes_config_and_a_byte_tokenizer(tmp_path):
    run_dir = _run(tmp_path, "rope", rotary_dim=8, scaling={"rope_type": "linear", "factor": 2.0})
    export_hf(run_dir, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 16
    assert config["rope_parameters"] == {
        "rope_type": "proportional",
        "partial_rotary_factor": 0.5,
        "factor": 2.0,
        "rope_theta": 1e8,
    }
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "héllo, wörld\n\t€ 😀"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tokenizer.decode(ids) == text
    assert (tmp_path / "hf" / "extrapos_export.json").is_file()


@torch.no_grad()
def test_rope_override_on_a_partial_rotary_export_scales_only_the_rotated_dims(tmp_path):
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    run_dir = _run(tmp_path, "rope", rotary_dim=8, base=500.0)
    export_hf(run_dir, tmp_path / "hf")
    ours = GPT.from_checkpoint(run_dir)
    config = GPTConfig.from_dict(
        {
            **ours.config.to_dict(),
            "encoding_params": {"rotary_dim": 8, "base": 500.0, "scaling": yarn},
        }
    )
    scaled = GPT(config).eval()
    scaled.load_state_dict(ours.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        theirs = load_hf_model(tmp_path / "hf", rope=yarn)
    idx = torch.randint(0, 256, (2, 48))
    torch.testing.assert_close(theirs(idx), scaled(idx), rtol=0, atol=1e-5)
    export_hf(_run(tmp_path, "nope"), tmp_path / "nope")
    with pytest.raises(UserError, match="rotates no dims"):
        load_hf_model(tmp_path / "nope", rope=yarn)


@pytest.mark.parametrize(
    ("encoding", "params", "match"),
    [
        ("alibi", {}, "encoding 'alibi' has no LlamaForCausalLM equivalent; exportable: rope"),
        ("learned", {"max_len": 64}, "encoding 'learned'"),
        ("rope", {"rotary_dim": 8, "scaling": SCALINGS["yarn"]}, "partial rotary"),
    ],
)
def test_export_refuses_what_llama_cannot_express(tmp_path, encoding, params, match):
    with pytest.raises(UserError, match=match):
        export_hf(_run(tmp_path, encoding, **params), tmp_path / "hf")


def test_export_and_eval_hf_refuse_run_dir_mixups(tmp_path):
    run_dir = _run(tmp_path, "rope")
    with pytest.raises(UserError, match="run directory"):
        export_hf(run_dir, run_dir)
    with pytest.raises(UserError, match="is an extrapos run"):
        load_hf_model(run_dir)


def test_cli_export_then_eval_hf_equals_our_eval(tmp_path, capsys):
    run_dir = _run(tmp_path, "rope", rotary_dim=8)
    data = tmp_path / "text.txt"
    data.write_text(
        "".join(f"line {i}: the quick brown fox jumps over {i * 7}\n" for i in range(300))
    )
    assert main(["export-hf", str(run_dir), str(tmp_path / "hf")]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    argv = ["eval-hf", str(tmp_path / "hf"), "--lengths", "16,32", "--data", str(data)]
    assert main([*argv, "--protocol", "sliding", "--stride", "8", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    ours = GPT.from_checkpoint(run_dir)
    tokens = load_corpus(str(data)).tokens("test", ByteTokenizer())
    expected = evaluate_lengths(
        ours, tokens, [16, 32], "sliding", stride=8, token_bytes=ByteTokenizer().token_bytes()
    )
    for got, want in zip(results, expected, strict=True):
        assert got["tokens"] == want["tokens"]
        assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-5)
        assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-5)
    # --rope on the export: YaRN patched in, and a bad dict is a one-line error
    rope = json.dumps({"rope_type": "yarn", "factor": 4})
    assert main([*argv, "--rope", rope]) == 0
    assert main([*argv, "--rope", '{"rope_type": "yarn", "fctor": 4}']) == 2
    assert "'fctor'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# tokenizers


def test_hf_tokenizer_token_bytes_add_up_for_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["the theory of the thermal thesis", "déjà vu – naïve café", "😀 emoji 😀"] * 5
    backend.train_from_iterator(corpus, trainer)
    tokenizer = HFTokenizer(
        PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>"), vocab_size=320
    )
    sizes = tokenizer.token_bytes()
    assert sizes.shape == (320,) and sizes[0] == 0  # <eos> is special
    assert int(sizes.max()) > 1  # merges span several bytes
    for text in ("the thermal café 😀", "naïve theory"):
        ids = tokenizer.encode(text)
        assert int(sizes[ids].sum()) == len(text.encode("utf-8"))
        assert tokenizer.decode(ids) == text


def _save(model: Any, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def test_missing_tokenizer_falls_back_to_bytes_or_errors(tmp_path):
    big = GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    folder = _save(GPT2LMHeadModel(big), tmp_path / "big")
    with pytest.warns(FallbackWarning, match="byte tokenizer"):
        model = load_hf_model(folder)
    assert isinstance(model.tokenizer, ByteTokenizer)
    small = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(UserError, match="no tokenizer files, and its vocab_size 64 < 256"):
        load_hf_model(_save(GPT2LMHeadModel(small), tmp_path / "small"))
    with pytest.raises(UserError, match="no config.json"):
        load_hf_model(tmp_path)


# ---------------------------------------------------------------------------------------------
# classic models


@torch.no_grad()
def test_gpt2_position_limit_and_interpolation(tmp_path, capsys):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    folder = _save(GPT2LMHeadModel(config), tmp_path / "gpt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        model = load_hf_model(folder)
        stretched = load_hf_model(folder, interpolate_positions=40)
    assert isinstance(model, HFCausalLM)
    with pytest.raises(UserError, match="n_positions=16.*--interpolate-positions 32"):
        model(torch.zeros(1, 32, dtype=torch.long))
    tokens = torch.randint(0, 256, (200,))
    records = evaluate_lengths(model, tokens, [8, 32])
    assert records[0]["ppl"] > 1 and records[1]["ppl"] is None
    assert "n_positions=16" in records[1]["error"]
    # interpolation: first and last rows kept, the rest linear in between
    old = model.hf.transformer.wpe.weight
    new = stretched.hf.transformer.wpe.weight
    assert new.shape == (40, 16) and stretched.config.n_positions == 40
    torch.testing.assert_close(new[0], old[0])
    torch.testing.assert_close(new[-1], old[-1])
    x = 13 * 15 / 39  # new row 13 sits at old position 5
    torch.testing.assert_close(new[13], old[5] + (x - 5) * (old[6] - old[5]))
    assert perplexity(stretched, tokens, 32)["ppl"] > 1
    argv = ["eval-hf", str(folder), "--lengths", "8,32", "--data", str(_text(tmp_path))]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "L=    32: n/a" in out.out and "warning:" in out.err
    assert main([*argv, "--interpolate-positions", "32"]) == 0
    assert "n/a" not in capsys.readouterr().out
    assert main([*argv, "--interpolate-positions", "8"]) == 2


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"
    path.write_text("".join(f"sentence number {i} is here.\n" for i in range(400)))
    return path


@torch.no_grad()
def test_bert_is_refused_unless_causal_and_interpolates(tmp_path):
    config = BertConfig(
        vocab_size=256,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    with pytest.raises(UserError, match="bidirectional"):
        load_hf_model(_save(BertLMHeadModel(config), tmp_path / "bert"))
    config.is_decoder = True
    folder = _save(BertLMHeadModel(config), tmp_path / "bert_decoder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        model = load_hf_model(folder)
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 256)
    with pytest.raises(UserError, match="max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    assert interpolate_position_embeddings(model.hf, 48) == 16
    assert model.hf.bert.embeddings.position_ids.shape == (1, 48)
    assert model(torch.zeros(2, 48, dtype=torch.long)).shape == (2, 48, 256)
    with pytest.raises(UserError, match="must exceed"):
        interpolate_position_embeddings(model.hf, 48)


def _t5(num_buckets: int = 8, max_distance: int = 20) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=256,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
    )
    return T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (16, 64)])
def test_t5_buckets_equal_transformers_causal_buckets(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    distances = torch.arange(0, 1000)
    theirs = T5Attention._relative_position_bucket(
        -distances, bidirectional=False, num_buckets=num_buckets, max_distance=max_distance
    )  # transformers' relative position is j - i <= 0
    assert torch.equal(t5_buckets(distances, num_buckets, max_distance), theirs)


@torch.no_grad()
def test_t5_decoder_bias_and_lm_use_past_max_distance(tmp_path):
    model = _t5()
    with torch.no_grad():
        attention = model.decoder.block[0].layer[0].SelfAttention
        attention.relative_attention_bias.weight.normal_()
    n = 60  # 3x max_distance: every distance past 20 shares the last bucket
    theirs = attention.compute_bias(n, n)[0]  # (h, n, n)
    table = t5_bias_from_hf(model).distance_bias(n)  # (h, n)
    i, j = torch.tril_indices(n, n)
    torch.testing.assert_close(table[:, i - j], theirs[:, i, j], rtol=0, atol=0)
    folder = _save(model, tmp_path / "t5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        lm = load_hf_model(folder)
    assert lm.kind == "t5"
    idx = torch.randint(0, 256, (2, n))
    logits = lm(idx)
    assert logits.shape == (2, n, 256) and torch.isfinite(logits).all()
    encoder_ids = torch.full((2, 1), model.config.eos_token_id)
    expected = model(input_ids=encoder_ids, decoder_input_ids=idx).logits
    torch.testing.assert_close(logits, expected)
    # causal: changing a later token leaves earlier logits unchanged
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 256
    torch.testing.assert_close(lm(changed)[:, :-1], logits[:, :-1])


@pytest.mark.parametrize(
    ("model_fields", "params", "match"),
    [
        ({}, {"logn_scale_len": 16}, "logn_scale_len=16"),
        ({"causal": False}, {}, "causal=False"),
        ({"random_positions": 64}, {}, "random_positions=64"),
        ({"embed_scale": True}, {}, "embed_scale=True"),
    ],
)
def test_export_refuses_runs_llama_would_not_reproduce_and_writes_nothing(
    tmp_path, model_fields, params, match
):
    """The export used to drop logn_scale_len silently (its 64-token check could not see it)."""
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=256, n_layer=1, n_head=2, d_model=32, encoding="rope", encoding_params=params,
        **model_fields,
    )  # fmt: skip
    save_model(tmp_path / "run", GPT(config), {"model": config.to_dict()}, ByteTokenizer())
    with pytest.raises(UserError, match=match):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def _siblings(folder: Path) -> set[str]:
    return {p.name for p in folder.parent.iterdir()}


def test_the_export_check_runs_past_the_trained_length(tmp_path, monkeypatch):
    """An export whose RoPE differs only past the trained length is caught. Dynamic NTK is
    plain RoPE inside it, so writing it as plain RoPE passed the old 64-token check."""
    dynamic = {"rope_type": "dynamic", "factor": 4.0}
    run_dir = _run(tmp_path, "rope", train_len=64, scaling=dynamic, max_position_embeddings=64)
    result = export_hf(run_dir, tmp_path / "hf")
    assert result["check_length"] == 128 and result["max_abs_diff"] < 1e-5
    assert json.loads((tmp_path / "hf" / "extrapos_export.json").read_text())["check_length"] == 128
    import extrapos.hf.export as export

    real = export.llama_rope_parameters

    def plain(model, length):  # a mapping bug that drops the scaling
        params, perm = real(model, length)
        return {"rope_type": "default", "rope_theta": params["rope_theta"]}, perm

    monkeypatch.setattr(export, "llama_rope_parameters", plain)
    assert export_hf(run_dir, tmp_path / "hf64", check_length=64)["max_abs_diff"] < 1e-5
    before = _siblings(tmp_path / "hf")
    with pytest.raises(UserError, match=r"on 128 tokens \(2 x the trained length 64\)"):
        export_hf(run_dir, tmp_path / "bad")
    assert _siblings(tmp_path / "hf") == before  # no folder, no temporary left


def test_a_failed_export_leaves_nothing_and_keeps_the_previous_export(tmp_path, monkeypatch):
    import extrapos.hf.export as export

    run_dir = _run(tmp_path, "rope")
    monkeypatch.setattr(export, "VERIFY_ATOL", -1.0)  # every self-check fails
    before = _siblings(run_dir)
    with pytest.raises(UserError, match="nothing was written"):
        export_hf(run_dir, tmp_path / "hf")
    assert _siblings(run_dir) == before  # no hf/, no .hf.extrapos-*.tmp
    monkeypatch.setattr(export, "VERIFY_ATOL", 1e-4)
    export_hf(run_dir, tmp_path / "hf")
    weights = (tmp_path / "hf" / "model.safetensors").read_bytes()
    monkeypatch.setattr(export, "VERIFY_ATOL", -1.0)
    with pytest.raises(UserError, match="nothing was written"):
        export_hf(_run(tmp_path, "rope", base=500.0), tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == weights
    assert not [p for p in tmp_path.iterdir() if "extrapos-" in p.name]


def test_export_replaces_only_a_previous_export(tmp_path):
    run_dir = _run(tmp_path, "rope")
    export_hf(run_dir, tmp_path / "hf")
    export_hf(_run(tmp_path, "rope", base=500.0), tmp_path / "hf")  # ours: replaced
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["rope_parameters"][
        "rope_theta"
    ] == pytest.approx(500.0)
    (tmp_path / "hf" / "notes.txt").write_text("mine")  # no longer only ours
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    for target in (tmp_path / "hf", foreign, run_dir.parent / "not_a_folder"):
        if target.name == "not_a_folder":
            target.write_text("x")
        with pytest.raises(UserError, match="did not write|not a folder"):
            export_hf(run_dir, target)
    assert (tmp_path / "hf" / "notes.txt").read_text() == "mine"
    assert (foreign / "config.json").read_text() == "{}"
    (tmp_path / "empty").mkdir()
    export_hf(run_dir, tmp_path / "empty")  # an empty folder is filled
    assert (tmp_path / "empty" / "model.safetensors").is_file()


@torch.no_grad()
def test_eval_hf_on_dynamic_rope_gives_the_same_numbers_in_any_length_order(tmp_path):
    """transformers' dynamic RoPE keeps the frequencies of the longest length it has seen; the
    adapter restores the rotary state before every forward, so each length is scored from the
    same state (and equals our own dynamic model, which is stateless)."""
    dynamic = {"rope_type": "dynamic", "factor": 2.0}
    run_dir = _run(tmp_path, "rope", scaling=dynamic, max_position_embeddings=16)
    export_hf(run_dir, tmp_path / "hf")
    data = tmp_path / "text.txt"
    data.write_text("".join(f"line {i}: the quick brown fox {i * 7}\n" for i in range(200)))
    argv = ["eval-hf", str(tmp_path / "hf"), "--data", str(data), "--max-tokens", "256"]
    results = {}
    for order in ("16,32,64", "64,32,16"):
        out = tmp_path / f"{order}.json"
        assert main([*argv, "--lengths", order, "--out", str(out)]) == 0
        records = json.loads(out.read_text())["results"]
        results[order] = {r["length"]: r["ppl"] for r in records}
    assert results["16,32,64"] == results["64,32,16"]  # identical, not merely close
    ours = GPT.from_checkpoint(run_dir).eval()
    tokens = load_corpus(str(data)).tokens("test", ByteTokenizer())
    for record in evaluate_lengths(ours, tokens, [16, 32, 64], "nonoverlap", max_tokens=256):
        assert results["64,32,16"][record["length"]] == pytest.approx(record["ppl"], rel=1e-5)
