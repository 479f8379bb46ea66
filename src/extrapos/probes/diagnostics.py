"""Diagnostics: what attention does as the context grows, and loss by position.

Attention statistics (our GPT only). The model's fast attention paths never form the attention
matrix, so it is recomputed here, layer by layer, from each layer's real input:

1. one forward pass with forward hooks on every `model.blocks[i].attn` captures its input x
   (b, n, D), its `PositionContext` and its output;
2. per layer, q, k, v = x W_qkv; q, k rotated by `encoding.rotate_qk` when "qk" is a site;
3. per block of queries (`query_chunk` rows, so memory is O(b·h·c·n), not (h, n, n)):
   P = softmax(q kᵀ/√d + B + M), B the distance-bias table gathered at pos_i − pos_j when
   "bias" is a site, M the causal mask — exactly `extrapos.kernels.attention`'s formula;
4. `check=True` verifies W_out (P v) equals the captured output of the layer, so an encoding
   whose attention is not modelled here fails loudly instead of producing wrong statistics.

Encodings at the `attention` site (they compute attention themselves: ReRoPE, Self-Extend,
CoPE, …) are supported when they offer `attention_probabilities(q, k, q_positions,
k_positions, q_offset, layer) -> (b, h, s, t)` from raw q, k; otherwise a `UserError` says so.

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

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from extrapos.core.errors import UserError
from extrapos.core.files import write_bytes, write_json
from extrapos.core.stats import geometric_bins  # noqa: F401  (re-exported)
from extrapos.kernels.attention import bias_block, use_backend

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


def _capture(model: Any, idx: Tensor, positions: Tensor | None) -> list[tuple[Tensor, Any, Tensor]]:
    """(input x, PositionContext, output) of every attention layer for one forward pass."""
    captured: list[tuple[Tensor, Any, Tensor] | None] = [None] * len(model.blocks)

    def hook(i: int):  # noqa: ANN202
        def fn(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            x = args[0] if args else kwargs["x"]
            ctx = args[1] if len(args) > 1 else kwargs.get("ctx")
            if ctx is None:  # not passed positionally: rebuild it the way the model does
                ctx = model.position_context(x.shape[1], positions, None, x.device)
            captured[i] = (x.detach(), ctx, output.detach())

        return fn

    handles = [
        blk.attn.register_forward_hook(hook(i), with_kwargs=True)
        for i, blk in enumerate(model.blocks)
    ]
    try:
        with torch.inference_mode(), use_backend("chunked"):  # no FlexAttention compile here
            model(idx, positions=positions)
    finally:
        for h in handles:
            h.remove()
    assert all(c is not None for c in captured)
    return captured  # type: ignore[return-value]


def attention_chunks(
    model: Any,
    idx: Tensor,
    positions: Tensor | None = None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    check: bool = True,
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield (layer, first query, P) with P (b, h, c, n) float32 the attention probabilities
    of queries [first, first + c) of that layer; see the module docstring."""
    if not hasattr(model, "blocks") or not hasattr(model, "encoding"):
        raise UserError("attention diagnostics need an extrapos GPT (with .blocks and .encoding)")
    b, n = idx.shape
    enc = model.encoding
    own = "attention" in enc.sites  # the encoding computes attention itself (ReRoPE, CoPE, …)
    if own and not hasattr(enc, "attention_probabilities"):
        raise UserError(
            f"encoding '{enc.name}' computes its own attention (site 'attention') and has no "
            f"attention_probabilities(q, k, q_positions, k_positions, q_offset, layer) method; "
            f"attention diagnostics support it once it has one"
        )
    for layer, (x, ctx, ref) in enumerate(_capture(model, idx, positions)):
        attn = model.blocks[layer].attn
        h, d = attn.n_head, attn.head_dim
        with torch.inference_mode():
            q, k, v = attn.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (b, h, n, d)
            if "qk" in enc.sites and not own:
                q, k = enc.rotate_qk(q, k, ctx.q_positions, ctx.k_positions)
            own_probs = None
            if own:  # optional hook: (b, h, n, n) probabilities from raw q, k
                own_probs = enc.attention_probabilities(
                    q, k, ctx.q_positions, ctx.k_positions, ctx.q_offset, layer
                ).float()
            q, k, v = q.float(), k.float(), v.float()
            worst, scale = 0.0, float(ref.abs().max())
            for start in range(0, n, query_chunk):
                stop = min(start + query_chunk, n)
                scores = q[..., start:stop, :] @ k.transpose(-1, -2) / math.sqrt(d)  # (b,h,c,n)
                q_index = torch.arange(start, stop, device=idx.device)
                if own_probs is not None:
                    scores = own_probs[..., start:stop, :].log()
                elif ctx.bias_table is not None:
                    scores = scores + bias_block(
                        ctx.bias_table,
                        ctx.q_positions[start:stop],
                        ctx.k_positions,
                        q_index,
                        torch.float32,
                    )
                else:
                    visible = torch.arange(n, device=idx.device)[None, :] <= q_index[:, None]
                    scores = scores.masked_fill(~visible, float("-inf"))
                probs = scores.softmax(-1)
                if check:
                    y = (probs @ v).transpose(1, 2).reshape(b, stop - start, h * d)
                    mine = attn.out(y.to(attn.out.weight.dtype)).float()
                    worst = max(worst, float((mine - ref[:, start:stop].float()).abs().max()))
                yield layer, start, probs
            tolerance = (1e-3 if x.dtype == torch.float32 else 3e-2) * scale + 1e-6
            if check and worst > tolerance:
                raise UserError(
                    f"attention diagnostics cannot reproduce layer {layer} of encoding "
                    f"'{enc.name}' (max error {worst:.3g} vs output scale {scale:.3g}); its "
                    f"attention is not softmax(qk/sqrt(d) + distance bias), so these statistics "
                    f"do not apply to it"
                )


@torch.inference_mode()
def attention_probabilities(
    model: Any, idx: Tensor, positions: Tensor | None = None, check: bool = True
) -> list[Tensor]:
    """The full attention matrix of every layer: a list of (b, h, n, n) float32 (row i sums to
    1 over j ≤ i). Memory O(L·b·h·n²): meant for short inputs and plots."""
    n = idx.shape[1]
    out: list[list[Tensor]] = [[] for _ in model.blocks]
    for layer, _, probs in attention_chunks(model, idx, positions, n, check):
        out[layer].append(probs)
    return [torch.cat(chunks, dim=2) for chunks in out]


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
            for layer, start, probs in attention_chunks(model, idx, None, query_chunk, check):
                c = probs.shape[2]
                dist = (
                    torch.arange(start, start + c, device=device)[:, None]
                    - torch.arange(n, device=device)[None, :]
                )  # (c, n), i − j
                ent = -torch.special.xlogy(probs, probs).sum(-1)  # (b, h, c)
                entropy[layer] += ent.sum((0, 2)).double().cpu()
                distance[layer] += (probs * dist.clamp(min=0)).sum((0, 2, 3)).double().cpu()
                sink[layer] += probs[..., 0].sum((0, 2)).double().cpu()
                bin_of = _bin_index(dist).expand_as(probs)
                mass = torch.zeros(*probs.shape[:3], len(bins), device=device)
                mass.scatter_add_(-1, bin_of, probs)
                hist[layer] += mass.sum((0, 2)).double().cpu()
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
