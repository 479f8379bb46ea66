"""Windows of a token stream, the LM driver's data: `sample_batch` draws the random training
windows of one step (the same draws on every rank; each rank builds its rows), `validate` scores
non-overlapping windows of the valid split (under DDP each rank a share, all-reduced).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from extrapos.models.gpt import GPT
from extrapos.training.distributed import DistInfo, distributed_info
from extrapos.training.loop import autocast

__all__ = ["sample_batch", "validate"]


def sample_batch(
    tokens: torch.Tensor | np.ndarray,
    batch_size: int,
    length: int,
    generator: torch.Generator,
    rows: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a 1-D token stream (tensor or numpy array, e.g. a memory map):
    inputs (b, L) and next-token targets (b, L), int64.

    Always draws `batch_size` starts from `generator` (so every rank advances it alike);
    `rows` selects which of those windows to build (this rank's share of the global batch).
    """
    starts = torch.randint(0, len(tokens) - length, (batch_size,), generator=generator)
    if rows is not None:
        starts = starts[rows]
    if isinstance(tokens, torch.Tensor):
        windows = torch.stack([tokens[s : s + length + 1] for s in starts.tolist()])
    else:
        index = starts.numpy()[:, None] + np.arange(length + 1)
        windows = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def validate(
    model: GPT,
    tokens: np.ndarray | torch.Tensor,
    length: int,
    max_tokens: int,
    batch_size: int,
    precision: str = "fp32",
    info: DistInfo | None = None,
    target_mask: np.ndarray | None = None,
) -> float:
    """Mean next-token loss over non-overlapping windows of `length` at the start of `tokens`
    (as many as fit in `max_tokens` targets, at least one). Under DDP each rank scores every
    W-th window and the sums are all-reduced, so every rank returns the same number.
    `target_mask` (n,) bool (`data.dialogue.target_mask`): only tokens i with mask[i] are
    scored as targets (dialogue responses under `loss_on="responses"`); None: every token."""
    info = info or distributed_info()
    device = next(model.parameters()).device
    n_windows = min((len(tokens) - 1) // length, max(1, max_tokens // length))
    mine = list(range(info.rank, n_windows, info.world_size))
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # nll sum, targets
    was_training = model.training
    model.eval()
    for i in range(0, len(mine), batch_size):
        starts = np.array(mine[i : i + batch_size]) * length
        index = starts[:, None] + np.arange(length + 1)
        rows = torch.as_tensor(np.asarray(tokens[index], dtype=np.int64), device=device)
        with autocast(device, precision):
            logits = model(rows[:, :-1])
        targets = rows[:, 1:]
        if target_mask is not None:  # -100: not a target (cross_entropy's ignore_index)
            keep = torch.as_tensor(target_mask[index[:, 1:]], device=device)
            targets = targets.masked_fill(~keep, -100)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        sums[0] += nll.double()
        sums[1] += (targets != -100).sum()
    model.train(was_training)
    if info.world_size > 1:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1])
