"""Diagnostics: what attention does as the context grows, and loss by position.

Attention statistics (our GPT, every registered encoding). The attention probabilities come from
the code that computes each layer's output, as HF's `output_attentions`: one forward pass with
an `AttentionProbe` (`extrapos.models.gpt`), which the one dispatch
(`extrapos.encodings.dispatch.encoded_attention`) fills per query chunk —

- for the input/q-k/bias/FFN sites (and none) the dispatch forms P = softmax(q kᵀ/√d + B + M)
  by blocks of `query_chunk` queries instead of calling the fused kernels, B the distance-bias
  table gathered at pos_i − pos_j, M the causal mask: memory O(b·h·c·n), never (h, n, n);
- encodings that attend themselves (CoPE, DAPE, FIRE, Transformer-XL, ReRoPE, Self-Extend,
  STRING, hybrid) report the probabilities of their own chunk loop
  (`extrapos.kernels.chunks.blockwise_attention`).

`check=True` verifies, per layer, that W_out (P v) equals the layer's output in that same pass,
so probabilities that are not what the layer used (a hook changing the output, an encoding that
does not report them) fail loudly instead of producing wrong statistics.

Per query i (token index, keys j ≤ i) and head:

    entropy H_i = −Σ_j P_ij log P_ij          (uniform causal attention: log(i + 1))
    mean distance D_i = Σ_j P_ij (i − j)       (uniform: i / 2)
    sink mass = P_i0                           (attention on the first token)
    distance histogram: mass on i − j = 0, 1, [2, 4), [4, 8), … (`distance_bins`)

each averaged over every query of every window. Lengths of a few thousand are cheap; the
chunked recomputation costs one extra attention pass per layer.

Loss by position: `perplexity()` returns `position_nll` (mean loss of targets at each window
offset); `write_position_nll` saves the curves as JSON and `plot_position_nll` draws them on a
log-x axis (offsets averaged in geometric bins, a dashed line at the training length).

Shapes: b windows, h heads, n length, c query chunk, d head dim, D d_model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.files import write_bytes, write_json
from extrapos.core.stats import geometric_bins
from extrapos.kernels.attention import use_backend
from extrapos.models.gpt import AttentionProbe

DEFAULT_QUERY_CHUNK = 512


def distance_bins(n: int) -> list[tuple[int, int]]:
    """Half-open distance ranges [lo, hi) for the histogram: [0,1), [1,2), [2,4), [4,8), …,
    covering distances 0 … n−1."""
    bins = [(0, 1)]
    lo = 1
    while lo < n:
        bins.append((lo, 2 * lo))
        lo *= 2
    return bins


def _bin_index(distances: Tensor) -> Tensor:
    """Bin of each non-negative distance: 0 -> 0, d >= 1 -> floor(log2 d) + 1."""
    d = distances.clamp(min=0)
    out = torch.zeros_like(d)
    nz = d > 0
    out[nz] = torch.floor(torch.log2(d[nz].double())).long() + 1
    return out


#: receives (layer, first query, P (b, h, c, n) float32) for every chunk of every layer
ChunkFn = Callable[[int, int, Tensor], None]


def probe_attention(
    model: Any,
    idx: Tensor,
    on_chunk: ChunkFn,
    positions: Tensor | None = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    check: bool = True,
) -> None:
    """One forward pass of `model` on idx (b, n) that hands every layer's attention
    probabilities to `on_chunk(layer, start, P)`, P (b, h, c, n) float32 for queries
    [start, start + c) (keys a chunk cannot see are 0); see the module docstring."""
    if not hasattr(model, "blocks") or not hasattr(model, "encoding"):
        raise UserError("attention diagnostics need an extrapos GPT (with .blocks and .encoding)")
    b, n = idx.shape
    layers = len(model.blocks)
    values: list[Tensor | None] = [None] * layers  # v (b, h, n, d) float32 of each layer
    mixed: list[list[Tensor]] = [[] for _ in range(layers)]  # P v per chunk
    covered = [0] * layers  # queries reported per layer
    errors: list[tuple[float, float]] = [(0.0, 0.0)] * layers  # (max error, output scale)
    dtypes: list[torch.dtype] = [torch.float32] * layers

    def before(i: int):  # noqa: ANN202
        def fn(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["x"]
            qkv = module.qkv(x).view(b, n, 3, module.n_head, module.head_dim)
            values[i] = qkv[:, :, 2].transpose(1, 2).float()

        return fn

    def after(i: int):  # noqa: ANN202
        def fn(module: Any, args: Any, kwargs: Any, output: Tensor) -> None:
            if not check or covered[i] != n:
                return
            y = torch.cat(mixed[i], dim=2).transpose(1, 2).reshape(b, n, -1)
            mine = module.out(y.to(module.out.weight.dtype)).float()
            errors[i] = (float((mine - output.float()).abs().max()), float(output.abs().max()))
            dtypes[i] = output.dtype
            mixed[i].clear()

        return fn

    def record(layer: int, start: int, probs: Tensor) -> None:
        probs = probs.float()
        if probs.shape[-1] < n:  # a chunk sees keys up to its last query only
            probs = F.pad(probs, (0, n - probs.shape[-1]))
        covered[layer] += probs.shape[2]
        if check:
            mixed[layer].append(probs @ values[layer])  # (b, h, c, d)
        on_chunk(layer, start, probs)

    handles = []
    for i, blk in enumerate(model.blocks):
        handles.append(blk.attn.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(blk.attn.register_forward_hook(after(i), with_kwargs=True))
    try:
        with torch.inference_mode(), use_backend("chunked"):  # no FlexAttention compile here
            model(idx, positions=positions, probe=AttentionProbe(record, query_chunk))
    finally:
        for h in handles:
            h.remove()
    enc = model.encoding
    for layer in range(layers):
        if covered[layer] != n:
            raise UserError(
                f"encoding '{enc.name}' computes attention itself and reported probabilities "
                f"for {covered[layer]} of {n} queries of layer {layer}; its attend() must pass "
                f"them to its probe (extrapos.kernels.chunks.blockwise_attention does)"
            )
        worst, scale = errors[layer]
        relative = 1e-3 if dtypes[layer] in (torch.float32, torch.float64) else 3e-2
        if check and worst > relative * scale + 1e-6:
            raise UserError(
                f"attention diagnostics cannot reproduce layer {layer} of encoding "
                f"'{enc.name}' (max error {worst:.3g} vs output scale {scale:.3g}): the layer's "
                f"output is not W_out(P v) for the probabilities its attention reported"
            )


@torch.inference_mode()
def attention_probabilities(
    model: Any, idx: Tensor, positions: Tensor | None = None, check: bool = True
) -> list[Tensor]:
    """The full attention matrix of every layer: a list of (b, h, n, n) float32 (row i sums to
    1 over j ≤ i). Memory O(L·b·h·n²): meant for short inputs and plots."""
    n = idx.shape[1]
    out: list[list[tuple[int, Tensor]]] = [[] for _ in model.blocks]
    probe_attention(
        model, idx, lambda layer, start, p: out[layer].append((start, p)), positions, n, check
    )
    return [torch.cat([p for _, p in sorted(chunks, key=lambda c: c[0])], dim=2) for chunks in out]


def _accumulate(
    sums: tuple[Tensor, Tensor, Tensor, Tensor], layer: int, start: int, probs: Tensor
) -> None:
    """Add one chunk's entropy, distance, sink and histogram sums (per layer and head)."""
    entropy, distance, sink, hist = sums
    c, n, device = probs.shape[2], probs.shape[3], probs.device
    dist = (
        torch.arange(start, start + c, device=device)[:, None]
        - torch.arange(n, device=device)[None, :]
    )  # (c, n), i − j
    ent = -torch.special.xlogy(probs, probs).sum(-1)  # (b, h, c)
    entropy[layer] += ent.sum((0, 2)).double().cpu()
    distance[layer] += (probs * dist.clamp(min=0)).sum((0, 2, 3)).double().cpu()
    sink[layer] += probs[..., 0].sum((0, 2)).double().cpu()
    bin_of = _bin_index(dist).expand_as(probs)
    mass = torch.zeros(*probs.shape[:3], hist.shape[-1], device=device)
    mass.scatter_add_(-1, bin_of, probs)
    hist[layer] += mass.sum((0, 2)).double().cpu()


@torch.inference_mode()
def attention_stats(
    model: Any,
    tokens: Tensor,
    lengths: Sequence[int],
    n_windows: int = 2,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Attention entropy, mean distance, sink mass and distance histogram per layer and head,
    at each length, averaged over all queries of `n_windows` non-overlapping windows of the 1-D
    token stream `tokens` (fewer when the stream is short).

    Returns flat records {"length", "layer", "head", "entropy", "uniform_entropy" (the
    entropy of uniform causal attention, mean of log(i+1)), "mean_distance", "sink_mass",
    "distance_hist" (mass per bin of `distance_bins(length)`), "distance_bins", "windows"}.
    """
    if tokens.ndim != 1:
        raise UserError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    records: list[dict[str, Any]] = []
    for n in lengths:
        count = min(n_windows, tokens.numel() // n)
        if count < 1:
            raise UserError(
                f"{tokens.numel()} tokens are fewer than the length {n}; use more data or "
                f"shorter --lengths"
            )
        model.encoding.check_positions(n - 1)
        bins = distance_bins(n)
        L, H = len(model.blocks), model.config.n_head
        entropy = torch.zeros(L, H, dtype=torch.float64)
        distance = torch.zeros(L, H, dtype=torch.float64)
        sink = torch.zeros(L, H, dtype=torch.float64)
        hist = torch.zeros(L, H, len(bins), dtype=torch.float64)

        for w in range(count):
            idx = tokens[w * n : (w + 1) * n][None].to(device)
            sums = (entropy, distance, sink, hist)
            probe_attention(
                model, idx, functools.partial(_accumulate, sums), None, query_chunk, check
            )
        queries = count * n
        uniform = float(torch.log(torch.arange(1, n + 1, dtype=torch.float64)).mean())
        for layer in range(L):
            for head in range(H):
                records.append(
                    {
                        "length": n,
                        "layer": layer,
                        "head": head,
                        "entropy": float(entropy[layer, head]) / queries,
                        "uniform_entropy": uniform,
                        "mean_distance": float(distance[layer, head]) / queries,
                        "sink_mass": float(sink[layer, head]) / queries,
                        "distance_hist": (hist[layer, head] / queries).tolist(),
                        "distance_bins": [list(b) for b in bins],
                        "windows": count,
                    }
                )
    model.train(was_training)
    return records


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attention_stats(
    records: Sequence[dict[str, Any]], path: str | Path | None = None, title: str = ""
) -> bytes:
    """Entropy and mean distance vs length (log-x), one panel per layer and a line per head
    (uniform causal attention dashed), and the distance histogram at the longest length.
    Returns PNG bytes; also writes them to `path` when given."""
    if not records:
        raise UserError("no attention statistics to plot")
    plt = _pyplot()
    layers = sorted({r["layer"] for r in records})
    heads = sorted({r["head"] for r in records})
    lengths = sorted({r["length"] for r in records})
    by = {(r["layer"], r["head"], r["length"]): r for r in records}
    fig, axes = plt.subplots(
        3, len(layers), figsize=(3.6 * len(layers), 8.4), squeeze=False, constrained_layout=True
    )
    longest = lengths[-1]
    for col, layer in enumerate(layers):
        ax_e, ax_d, ax_h = axes[0, col], axes[1, col], axes[2, col]
        for head in heads:
            rows = [by[(layer, head, n)] for n in lengths if (layer, head, n) in by]
            xs = [r["length"] for r in rows]
            ax_e.plot(xs, [r["entropy"] for r in rows], marker="o", label=f"head {head}")
            ax_d.plot(xs, [r["mean_distance"] for r in rows], marker="o")
            last = by.get((layer, head, longest))
            if last is not None:
                ax_h.plot(range(len(last["distance_hist"])), last["distance_hist"], marker=".")
        uniform = {r["length"]: r["uniform_entropy"] for r in records}
        ax_e.plot(lengths, [uniform[n] for n in lengths], "k--", lw=1, label="uniform")
        ax_d.plot(lengths, [(n - 1) / 2 / 2 for n in lengths], "k--", lw=1)  # uniform: mean i/2
        ax_d.set_yscale("log", base=2)  # non-positive values (length 1) are left out
        for ax in (ax_e, ax_d):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("length")
            ax.grid(alpha=0.3)
        ax_e.set_title(f"layer {layer}")
        bins = by[(layer, heads[0], longest)]["distance_bins"]
        ax_h.set_xticks(range(len(bins)))
        ax_h.set_xticklabels([str(lo) for lo, _ in bins], rotation=90, fontsize=7)
        ax_h.set_xlabel(f"distance ≥ (bin start), length {longest}")
        ax_h.grid(alpha=0.3)
    axes[0, 0].set_ylabel("attention entropy (nats)")
    axes[1, 0].set_ylabel("mean attention distance")
    axes[2, 0].set_ylabel("attention mass")
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    data = _png(fig)
    if path is not None:
        write_bytes(path, data)
    return data


def position_nll_payload(
    records: Sequence[dict[str, Any]], train_len: int | None = None
) -> dict[str, Any]:
    """The per-position curves of `evaluate_lengths`/`perplexity` records as one JSON object:
    {"train_len", "curves": [{"length", "protocol", "stride", "position_nll"}]}."""
    curves = [
        {k: r.get(k) for k in ("length", "protocol", "stride", "position_nll")}
        for r in records
        if r.get("position_nll") is not None
    ]
    if not curves:
        raise UserError("no per-position losses in these results (every length failed?)")
    return {"train_len": train_len, "curves": curves}


def write_position_nll(
    records: Sequence[dict[str, Any]], path: str | Path, train_len: int | None = None
) -> None:
    """Write `position_nll_payload(records, train_len)` to `path` (JSON)."""
    write_json(path, position_nll_payload(records, train_len))


def plot_position_nll(
    records: Sequence[dict[str, Any]],
    path: str | Path | None = None,
    train_len: int | None = None,
    per_octave: int = 4,
    title: str = "loss by position",
) -> bytes:
    """Mean loss vs context position (target offset + 1, log-x), one line per evaluated
    length, offsets averaged in geometric bins (`per_octave` per doubling; 0 = no averaging).
    Returns PNG bytes; also writes them to `path` when given."""
    payload = position_nll_payload(records, train_len)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for curve in payload["curves"]:
        values = curve["position_nll"]
        if per_octave > 0:
            xs, ys = geometric_bins(values, per_octave)
        else:
            pairs = [(o + 1, v) for o, v in enumerate(values) if v is not None]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        ax.plot(xs, ys, label=f"L={curve['length']}")
    if train_len is not None:
        ax.axvline(train_len, color="k", ls="--", lw=1, label=f"train length {train_len}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window (tokens of context + 1)")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = _png(fig)
    if path is not None:
        write_bytes(path, data)
    return data
