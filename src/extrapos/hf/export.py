"""Export a trained extrapos run as a `transformers` `LlamaForCausalLM` folder.

Our GPT is a Llama-shaped decoder (pre-norm RMSNorm, SwiGLU, no biases, attention scale
1/sqrt(head_dim), half-split RoPE), so the weights map one to one:

    embed                    -> model.embed_tokens        (tie_embeddings -> tie_word_embeddings)
    blocks.i.norm1 / norm2   -> model.layers.i.input_layernorm / post_attention_layernorm
    blocks.i.attn.qkv        -> q_proj, k_proj, v_proj    (rows [q; k; v], heads contiguous)
    blocks.i.attn.out        -> o_proj
    blocks.i.mlp.w1, w3, w2  -> gate_proj, up_proj, down_proj
    norm, lm_head            -> model.norm, lm_head

RoPE in transformers v5's Llama: `LlamaRotaryEmbedding` rotates the whole head; its default
type ignores `partial_rotary_factor` and other types would return too few frequencies for the
full-head rotation. So:

- `rope` with rotary_dim = head_dim: any scaling, written as `rope_parameters` (our `ntk` as
  plain RoPE with the NTK-scaled base, identical numbers).
- `rope` with rotary_dim r < head_dim (partial rotary, GPT-NeoX): Llama's `proportional` type
  (p-RoPE) zeroes the lowest frequencies, which leaves those dims unrotated. Our rotated pairs
  (i, i + r/2) are moved to Llama's pairs (i, i + d/2) by permuting the rows of q_proj and
  k_proj (attention is unchanged: q·k sums over the same products), and the base becomes
  base^(d/r) so that base'^(-2i/d) = base^(-2i/r). Works for scaling default, linear (its
  `factor`) and ntk; other scalings on partial rotary have no Llama form and are refused.
  The frequencies agree to float32 rounding (~1e-7 relative), not bit for bit.
- `nope`: `proportional` with partial_rotary_factor 0: every frequency is 0, cos = 1, sin = 0,
  an exact identity.

Every other encoding (alibi, t5, learned, sinusoidal, ...) has no Llama equivalent: `UserError`.
The tokenizer: our byte tokenizer is written as a `tokenizers` byte-level BPE with no merges
(token id = byte value), which `AutoTokenizer` loads. After writing, the export is reloaded
offline and its logits are compared with ours past the trained length (`max_abs_diff` in the
result); only then is the folder renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.files import atomic_dir, write_json
from extrapos.hf.rope import _partial_rotary_factor, rope_config_to_hf
from extrapos.models.gpt import GPT

__all__ = ["EXPORTABLE", "export_hf", "gpt_to_llama", "llama_rope_parameters"]

EXPORTABLE = "rope (full rotary: any scaling; partial rotary: scaling default, linear or ntk), nope"
#: the largest |logit difference| the reloaded export may show on the check input.
VERIFY_ATOL = 1e-4
#: scalings a partial-rotary model can carry into Llama (through `proportional`).
_PARTIAL_OK = ("default", "linear", "ntk")


def llama_rope_parameters(
    model: GPT, max_position_embeddings: int
) -> tuple[dict[str, Any], Tensor | None]:
    """(Llama `rope_parameters`, q/k row permutation within a head or None) for our model."""
    encoding = model.encoding
    head_dim = model.config.head_dim
    if encoding.name == "nope":
        return {
            "rope_type": "proportional",
            "partial_rotary_factor": 0.0,
            "rope_theta": 10000.0,
        }, None
    if encoding.name != "rope":
        raise UserError(
            f"encoding '{encoding.name}' has no LlamaForCausalLM equivalent; exportable: {EXPORTABLE}"
        )
    r, base, scaling = encoding.rotary_dim, encoding.base, encoding.scaling
    length = encoding.max_position_embeddings or max_position_embeddings
    if r == head_dim:
        fields = rope_config_to_hf(base, r, scaling, length, head_dim=head_dim)
        return fields["rope_parameters"], None
    rope_type = (scaling or {}).get("rope_type", "default")
    if rope_type not in _PARTIAL_OK:
        raise UserError(
            f"partial rotary (rotary_dim={r} < head_dim={head_dim}) with rope_type '{rope_type}' "
            f"has no LlamaForCausalLM form; exportable: {EXPORTABLE}"
        )
    fraction = _partial_rotary_factor(r, head_dim)
    if rope_type == "ntk":  # plain RoPE with the NTK-scaled base (bit-identical)
        base = rope_config_to_hf(base, r, scaling, length, head_dim=r)["rope_parameters"][
            "rope_theta"
        ]
    params: dict[str, Any] = {
        "rope_type": "proportional",
        "partial_rotary_factor": fraction,
        "rope_theta": float(base) ** (head_dim / r),
    }
    if rope_type == "linear":
        params["factor"] = scaling["factor"]
    # Llama slot s takes our dim perm[s]: rotated pairs to (i, i + d/2), unrotated dims after them
    half, rest = r // 2, (head_dim - r) // 2
    perm = torch.cat(
        (
            torch.arange(half),
            torch.arange(r, r + rest),
            torch.arange(half, r),
            torch.arange(r + rest, head_dim),
        )
    )
    return params, perm


def gpt_to_llama(
    model: GPT, max_position_embeddings: int, special: tuple[int | None, int | None] = (None, None)
) -> Any:
    """A `LlamaForCausalLM` with our model's weights (float32); see the module docstring."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    own = getattr(model.encoding, "max_position_embeddings", None)
    if own is not None and own != max_position_embeddings:
        raise UserError(
            f"the model's RoPE reads max_position_embeddings={own}; exporting with "
            f"{max_position_embeddings} would change its frequencies; drop the override"
        )
    rope_parameters, perm = llama_rope_parameters(model, max_position_embeddings)
    llama_config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters=rope_parameters,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=special[0],
        eos_token_id=special[1],
        pad_token_id=None,
    )
    rows = None
    if perm is not None:
        rows = torch.cat([perm + h * cfg.head_dim for h in range(cfg.n_head)])
    state: dict[str, Tensor] = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)
        if rows is not None:
            q, k = q[rows], k[rows]
        prefix = f"model.layers.{i}."
        state.update(
            {
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.o_proj.weight": block.attn.out.weight,
                prefix + "mlp.gate_proj.weight": block.mlp.w1.weight,
                prefix + "mlp.up_proj.weight": block.mlp.w3.weight,
                prefix + "mlp.down_proj.weight": block.mlp.w2.weight,
                prefix + "input_layernorm.weight": block.norm1.weight,
                prefix + "post_attention_layernorm.weight": block.norm2.weight,
            }
        )
    llama = LlamaForCausalLM(llama_config)
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    missing, unexpected = llama.load_state_dict(state, strict=False)
    if missing or unexpected:  # a transformers version with other names
        raise UserError(
            f"LlamaForCausalLM has parameters {sorted(missing)} we do not fill and not "
            f"{sorted(unexpected)}; this transformers version is not supported"
        )
    return llama.eval()


#: the bytes the exported byte tokenizer names BOS and EOS. The byte vocabulary has no spare id,
#: so BOS is the newline (what separates documents in training, so the model knows what follows
#: it) and EOS the NUL byte (never in text, so generation does not stop early); harnesses such as
#: `lm_eval --model hf` need both (rolling log-likelihood conditions the first token on BOS).
BOS_BYTE, EOS_BYTE = 10, 0


def byte_tokenizer_hf() -> Any:
    """Our byte tokenizer as a transformers tokenizer: byte-level BPE, no merges, id = byte,
    with BOS = newline and EOS = NUL (`BOS_BYTE`, `EOS_BYTE`), added to no text by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from extrapos.hf.adapter import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    chars = bytes_to_unicode()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=chars[BOS_BYTE], eos_token=chars[EOS_BYTE]
    )


@torch.no_grad()
def _check_representable(model: GPT) -> None:
    """Refuse, before writing anything, a run that a LlamaForCausalLM would not reproduce."""
    cfg, enc = model.config, model.encoding
    problems = {
        "causal=False (an encoder)": not cfg.causal,
        f"random_positions={cfg.random_positions}": cfg.random_positions is not None,
        "embed_scale=True (embeddings x sqrt(d_model))": cfg.embed_scale,
        f"logn_scale_len={getattr(enc, 'logn_scale_len', None)} (log-n query scaling)": (
            getattr(enc, "logn_scale_len", None) is not None
        ),
    }
    found = [what for what, present in problems.items() if present]
    if found:
        raise UserError(
            f"the run uses {found[0]}, which LlamaForCausalLM has no form for; the export would "
            "not be this model, so nothing was written"
        )


def export_hf(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    max_position_embeddings: int | None = None,
    check_length: int | None = None,
) -> dict[str, Any]:
    """Write run `run_dir` as a `LlamaForCausalLM` folder `out_dir` and verify it.

    `max_position_embeddings` (the config's trained length; default: the RoPE's own, else
    the run's train_len). The folder holds `config.json`, `model.safetensors`, the tokenizer
    files (byte tokenizer only) and `extrapos_export.json` (source run, encoding, mapping).
    The export is reloaded with `AutoModelForCausalLM.from_pretrained(out_dir,
    local_files_only=True)` and compared with our logits on `check_length` random tokens
    (default: 2 x the trained length, at least 64, so scalings that act only past it are
    checked). The folder is built beside `out_dir` and renamed into place only after the check
    passes (`extrapos.core.files.atomic_dir`): a refused or failed export leaves no folder. An
    existing `out_dir` is replaced only if it is empty or a previous export (its manifest lists
    every file in it); anything else is refused.
    Returns {"out_dir", "encoding", "rope_parameters", "max_abs_diff", "check_length",
    "tokenizer"}.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from extrapos.training.run_dir import load_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise UserError("OUT_DIR is the run directory; write the export to a new folder")
    run = load_run(run_dir)
    run_config, model, tokenizer = run.config, run.model.eval(), run.tokenizer
    _check_representable(model)  # up front, before anything is written
    if max_position_embeddings is None:
        max_position_embeddings = getattr(model.encoding, "max_position_embeddings", None)
    if max_position_embeddings is None:  # the RoPE reads no trained length: record train_len
        max_position_embeddings = run_config.get("train", {}).get("train_len")
    if not isinstance(max_position_embeddings, int) or max_position_embeddings < 1:
        raise UserError(
            f"{run_dir} records no train_len; pass max_position_embeddings (--max-position-embeddings)"
        )
    if check_length is None:  # past the trained length, where scalings and dynamic RoPE act
        check_length = max(64, 2 * max_position_embeddings)
    is_byte = getattr(tokenizer, "name", None) == "byte"
    llama = gpt_to_llama(
        model, max_position_embeddings, (BOS_BYTE, EOS_BYTE) if is_byte else (None, None)
    )
    tokenizer_note = "bytes: token id = UTF-8 byte value"
    if is_byte:
        tokenizer_note += f"; BOS = byte {BOS_BYTE} (newline), EOS = byte {EOS_BYTE} (NUL)"
    else:
        tokenizer_note = f"not exported ({getattr(tokenizer, 'name', '?')}); tokenize as in the run"
    # built in a temporary sibling and renamed into place only once the check has passed
    with atomic_dir(out_dir, is_previous_export, (SafetensorError,), "export folder") as tmp:
        llama.save_pretrained(str(tmp))
        if is_byte:
            byte_tokenizer_hf().save_pretrained(str(tmp))
        provenance = {
            "source_run": str(run_dir),
            "encoding": model.config.encoding,
            "encoding_params": model.config.encoding_params,
            "tokenizer": tokenizer_note,
            "mapping": "extrapos.hf.export: qkv -> q/k/v_proj, w1/w3/w2 -> gate/up/down_proj",
            "check_length": check_length,
            # what a later export may replace: only these (see is_previous_export)
            "files": sorted([p.name for p in tmp.iterdir()] + [MANIFEST]),
        }
        write_json(tmp / MANIFEST, provenance)
        reloaded = AutoModelForCausalLM.from_pretrained(
            str(tmp), local_files_only=True, dtype=torch.float32
        ).eval()
        diff = verify_export(reloaded, model, check_length)
        if not diff <= VERIFY_ATOL:
            raise UserError(
                f"the export gives logits {diff:.2e} away from the run's (> {VERIFY_ATOL:g}) "
                f"on {check_length} tokens ({check_length / max_position_embeddings:g} x the "
                f"trained length {max_position_embeddings}); nothing was written to {out_dir}. "
                "This transformers version maps the weights or the RoPE differently, please "
                "report it"
            )
    return {
        "out_dir": str(out_dir),
        "encoding": model.config.encoding,
        "rope_parameters": reloaded.config.rope_parameters,
        "max_abs_diff": diff,
        "check_length": check_length,
        "tokenizer": tokenizer_note,
    }


@torch.no_grad()
def verify_export(llama: Any, model: GPT, length: int) -> float:
    """max |logit difference| between the LlamaForCausalLM and our model on `length` seeded
    random tokens (one sequence, so every position 0..length-1 is compared)."""
    idx = torch.randint(
        0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)
    )
    return float((llama(input_ids=idx).logits.float() - model(idx)).abs().max())


#: the export's own record of what it wrote
MANIFEST = "extrapos_export.json"
#: what exports written before the manifest listed its files held (save_pretrained + tokenizer)
_LEGACY_EXPORT_FILES = frozenset(
    {
        MANIFEST,
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    }
)


def is_previous_export(folder: Path) -> bool:
    """Whether `folder` is an earlier `export_hf` output and nothing else: its manifest is
    there and every entry is a regular file the manifest lists (or, for exports older than
    the list, one the export writes). A file the user added makes it not ours."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        entries = list(folder.iterdir())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or "source_run" not in manifest:
        return False
    listed = manifest.get("files")
    ours = set(listed) if isinstance(listed, list) else _LEGACY_EXPORT_FILES
    return all(e.name in ours and e.is_file() and not e.is_symlink() for e in entries)
