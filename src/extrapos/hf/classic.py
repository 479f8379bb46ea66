"""The classic position schemes of `transformers` models: learned tables and T5 buckets.

Learned absolute tables (GPT-2: Radford et al. 2019; BERT: Devlin et al. 2019) are a true
length limit: a `(n, D)` table has no row for position n. `position_limit` names it and
`interpolate_position_embeddings` stretches the table to a longer length by linear
interpolation of its rows,

    W'[j] = lerp(W, j · (n - 1) / (N - 1)),   j = 0 .. N - 1     (align_corners=True)

so rows 0 and N - 1 equal the old rows 0 and n - 1 and position j of the new table sits where
position j·(n−1)/(N−1) sat in the old one: Position Interpolation (Chen et al. 2023,
arXiv:2306.15595) for a learned table, as ViT resizes its position embeddings for larger images
(Dosovitskiy et al. 2021, section 3.2). Without fine-tuning the model sees positions closer
together than it was trained on; it is a baseline, not a fix.

T5 (Raffel et al. 2020) is an encoder-decoder: its decoder's causal relative bias is the same
function as our `t5` encoding (`extrapos.encodings.t5_buckets`, one learned scalar per bucket
and head, shared by all layers). `t5_bias_from_hf` copies a T5 decoder's table into our
`T5Bias`; as a language model a T5 decoder is run on an encoder input of one EOS token (see
`extrapos.hf.adapter`), which is meaningful for LM-adapted checkpoints (Lester et al. 2021,
"The Power of Scale for Parameter-Efficient Prompt Tuning", t5-v1_1-lm-adapt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from extrapos.core.errors import UserError
from extrapos.encodings import build_encoding
from extrapos.encodings.bias import T5Bias

__all__ = [
    "LEARNED_POSITION_TABLES",
    "interpolate_position_embeddings",
    "learned_position_table",
    "position_limit",
    "t5_bias_from_hf",
]

#: model_type -> (table module under the base model, config attribute holding its length)
LEARNED_POSITION_TABLES: dict[str, tuple[str, str]] = {
    "gpt2": ("wpe", "n_positions"),
    "gpt_neo": ("wpe", "max_position_embeddings"),
    "bert": ("embeddings.position_embeddings", "max_position_embeddings"),
}


def learned_position_table(model: nn.Module) -> tuple[nn.Embedding, str] | None:
    """(the learned position `nn.Embedding`, its config attribute) of a supported model, or None."""
    config = getattr(model, "config", None)
    entry = LEARNED_POSITION_TABLES.get(getattr(config, "model_type", None))
    if entry is None:
        return None
    path, attribute = entry
    base = getattr(model, "base_model", model)
    table = base.get_submodule(path)
    if not isinstance(table, nn.Embedding):
        raise UserError(f"{path} of {type(model).__name__} is not an embedding table")
    return table, attribute


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """(number of learned positions, the config attribute that holds it), or None if unbounded."""
    found = learned_position_table(model)
    if found is None:
        return None
    table, attribute = found
    return table.num_embeddings, attribute


@torch.no_grad()
def interpolate_position_embeddings(model: nn.Module, new_len: int) -> int:
    """Stretch the learned position table of a GPT-2/GPT-Neo/BERT model to `new_len` rows.

    Linear interpolation of the rows (module docstring); the config's length attribute and
    BERT's `position_ids`/`token_type_ids` buffers follow. Returns the old length. `new_len`
    must exceed it; a model without a learned table raises `UserError`.
    """
    found = learned_position_table(model)
    if found is None:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise UserError(
            f"{kind} has no learned position table to interpolate; supported: "
            f"{', '.join(sorted(LEARNED_POSITION_TABLES))}"
        )
    table, attribute = found
    old_len = table.num_embeddings
    if not isinstance(new_len, int) or new_len <= old_len:
        raise UserError(
            f"--interpolate-positions must exceed the learned table's {old_len} positions "
            f"({attribute}), got {new_len}"
        )
    weight = table.weight.float()  # (n, D)
    stretched = F.interpolate(weight.T[None], size=new_len, mode="linear", align_corners=True)
    table.weight = nn.Parameter(stretched[0].T.to(table.weight.dtype).contiguous())
    table.num_embeddings = new_len
    setattr(model.config, attribute, new_len)
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    for name, dtype in (("position_ids", torch.long), ("token_type_ids", torch.long)):
        buffer = getattr(embeddings, name, None)
        if isinstance(buffer, torch.Tensor):
            fresh = torch.arange(new_len) if name == "position_ids" else torch.zeros(new_len)
            embeddings.register_buffer(
                name, fresh.to(dtype=dtype, device=buffer.device)[None, :], persistent=False
            )
    return old_len


def t5_bias_from_hf(t5_model: nn.Module) -> T5Bias:
    """Our `t5` encoding holding a transformers T5 decoder's relative-position bias table.

    T5 computes the bias in its first decoder layer (`relative_attention_bias`, an embedding of
    shape (num_buckets, heads)) with `bidirectional=False` and shares it with every layer; our
    `T5Bias.weight` has the same layout, so the copy is exact and `distance_bias(n)[h, i - j]`
    equals the decoder's `compute_bias(n, n)[0, h, i, j]` for j <= i, at any length.
    """
    config = getattr(t5_model, "config", None)
    if getattr(config, "model_type", None) not in ("t5", "mt5", "umt5"):
        raise UserError(
            "t5_bias_from_hf needs a transformers T5 model (T5ForConditionalGeneration)"
        )
    attention = t5_model.decoder.block[0].layer[0].SelfAttention
    if not attention.has_relative_attention_bias:
        raise UserError("the T5 decoder's first layer has no relative attention bias")
    encoding = build_encoding(
        "t5",
        num_heads=config.num_heads,
        num_buckets=config.relative_attention_num_buckets,
        max_distance=config.relative_attention_max_distance,
    )
    with torch.no_grad():
        encoding.weight.copy_(attention.relative_attention_bias.weight.float())
    return encoding
