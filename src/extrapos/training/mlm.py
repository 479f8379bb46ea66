"""The masked-LM objective (BERT; Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding", §3.1 and Appendix A.1).

Each position is *selected* independently with probability p = `MASK_RATE` (0.15). A selected
token is replaced by the mask id with probability 0.8, by a uniformly random other token with
probability 0.1, and left unchanged with probability 0.1 (so the model cannot tell which visible
tokens are targets). The loss is the cross-entropy of the original token at the selected
positions only:

    loss = Σ_{i selected} −log p(x_i | x̃) / max(1, #selected)

where x̃ is the corrupted sequence; unselected positions carry the target `IGNORE_INDEX` and do
not count. The model is an encoder (`GPTConfig(causal=False)`: every token sees the whole
window; distance biases in their bidirectional form).

Shapes: windows (b, s) int64; logits (b, s, V).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from extrapos.core.errors import UserError
from extrapos.models.config import GPTConfig
from extrapos.training.distributed import DistInfo, distributed_info
from extrapos.training.loop import autocast

#: probability that a position is selected as a target (BERT's 15%)
MASK_RATE = 0.15
#: of the selected positions: the share written over with the mask id, then with a random token
#: (the rest, 1 − 0.8 − 0.1 = 0.1, keep their token)
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
#: the target of positions that are not scored (`F.cross_entropy`'s default ignore_index)
IGNORE_INDEX = -100
#: seed of the masks drawn for validation and evaluation, so every length and method is scored
#: on the same selected tokens with the same corruption
EVAL_MASK_SEED = 0

__all__ = [
    "EVAL_MASK_SEED",
    "IGNORE_INDEX",
    "MASK_RATE",
    "check_encoder",
    "mask_tokens",
    "mlm_loss",
    "validate_mlm",
]


def mask_tokens(
    tokens: torch.Tensor,
    generator: torch.Generator,
    vocab_size: int,
    mask_id: int,
    rate: float = MASK_RATE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT corruption of `tokens` (any shape, int64, on the generator's device).

    Returns (inputs, targets) of the same shape: inputs with the selected positions corrupted
    80/10/10 (mask id / random token ≠ mask id / unchanged), targets holding the original token
    at selected positions and `IGNORE_INDEX` elsewhere. Always draws three tensors of
    `tokens.shape` from `generator` — selection uniforms, action uniforms, random ids, in that
    order — so the generator advances the same whatever the tokens are (every DDP rank stays in
    step, and a resumed run draws the same masks).
    """
    if not 0 < rate < 1:
        raise UserError(f"mask rate must be in (0, 1), got {rate}")
    if not 0 <= mask_id < vocab_size:
        raise UserError(f"mask id {mask_id} is outside the vocabulary [0, {vocab_size})")
    shape, device = tokens.shape, tokens.device
    selected = torch.rand(shape, generator=generator, device=device) < rate
    action = torch.rand(shape, generator=generator, device=device)
    # uniform over the vocabulary without the mask id: draw from V - 1 ids, skip over mask_id
    random_ids = torch.randint(0, vocab_size - 1, shape, generator=generator, device=device)
    random_ids = random_ids + (random_ids >= mask_id).long()
    inputs = tokens.clone()
    to_mask = selected & (action < MASK_SHARE)
    to_random = selected & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    inputs[to_mask] = mask_id
    inputs[to_random] = random_ids[to_random]
    targets = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, targets


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the selected positions (targets ≠ `IGNORE_INDEX`); logits
    (b, s, V), targets (b, s). Zero (with zero gradient) when nothing is selected, instead of
    the NaN of an empty mean."""
    nll = F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return nll / (targets != IGNORE_INDEX).sum().clamp(min=1)


def check_encoder(model_config: GPTConfig, encoding_sites: frozenset[str]) -> None:
    """Refuse a model the mlm objective cannot train: a causal one, or an encoding that computes
    causal attention itself (CoPE, DAPE, Transformer-XL, FIRE, ReRoPE: they have no
    bidirectional form)."""
    if model_config.causal:
        raise UserError(
            "the mlm objective needs an encoder (causal=False); a causal model would not see "
            "the right context. Set causal=False (run_training and `extrapos train` do)"
        )
    if "attention" in encoding_sites:
        raise UserError(
            f"encoding '{model_config.encoding}' computes causal attention itself and has no "
            "bidirectional form, so it cannot train with --objective mlm; use an input, q/k or "
            "bias encoding (e.g. alibi, rope, t5, sinusoidal)"
        )


@torch.no_grad()
def validate_mlm(
    model: torch.nn.Module,
    tokens: np.ndarray | torch.Tensor,
    length: int,
    max_tokens: int,
    batch_size: int,
    precision: str = "fp32",
    info: DistInfo | None = None,
    *,
    mask_id: int,
    seed: int = EVAL_MASK_SEED,
) -> float:
    """Mean masked-token loss over non-overlapping windows of `length` at the start of `tokens`
    (as many as fit in `max_tokens`, at least one), the masks drawn once with `seed` — the same
    selected tokens at every validation. Under DDP each rank scores every W-th window and the
    sums are all-reduced (every rank returns the same number)."""
    info = info or distributed_info()
    device = next(model.parameters()).device
    n_windows = min(len(tokens) // length, max(1, max_tokens // length))
    stream = torch.as_tensor(np.asarray(tokens[: n_windows * length], dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    inputs, targets = mask_tokens(stream, generator, model.config.vocab_size, mask_id)
    inputs, targets = inputs.view(n_windows, length), targets.view(n_windows, length)
    mine = torch.arange(info.rank, n_windows, info.world_size)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # nll sum, selected targets
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), batch_size):
        rows = mine[i : i + batch_size]
        x, y = inputs[rows].to(device), targets[rows].to(device)
        with autocast(device, precision):
            logits = model(x)
        sums[0] += F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).double()
        sums[1] += (y != IGNORE_INDEX).sum()
    model.train(was_training)
    if info.world_size > 1:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1].clamp(min=1))
