"""The LM bench report's plots (PNG bytes): perplexity vs evaluation length, loss by position
in the longest windows, and training loss, each one panel per family of encodings
(`extrapos.report.style`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from extrapos.core.stats import geometric_bins
from extrapos.report.summary import summarize

__all__ = ["loss_curves", "plot_losses", "plot_ppl", "plot_positions"]


def _plot_families(
    entries: list[dict[str, Any]],
    curve: Any,
    title: str,
    xlabel: str,
    ylabel: str,
    train_len: int | None,
    logy: bool = True,
    logx: bool = True,
) -> bytes | None:
    """PNG: one panel per family (`extrapos.report.style`), one line per entry with its own
    colour, line style and marker; `curve(entry)` gives (xs, ys, halves or None) or None."""
    from extrapos.report.style import legend, panel_figure, panels, plain_ticks, styles

    drawn = {p: [e for e in members if curve(e)] for p, members in panels(entries).items()}
    drawn = {p: members for p, members in drawn.items() if members}
    if not drawn:
        return None
    look = styles(entries)
    fig, axes = panel_figure(len(drawn))
    for ax, (panel, members) in zip(axes, drawn.items(), strict=True):
        bands = len(members) <= 6  # more bands than that turn a panel into mud
        xs_all: set[float] = set()
        for entry in members:
            xs, ys, halves = curve(entry)
            style = look[entry["method"]]
            ax.plot(xs, ys, label=entry["method"], ms=3.5, lw=1.4, markevery=_every(xs), **style)
            xs_all.update(xs)
            if bands and halves is not None and all(h is not None for h in halves):
                lo = [m - h for m, h in zip(ys, halves, strict=True)]
                hi = [m + h for m, h in zip(ys, halves, strict=True)]
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.12)
        if train_len is not None:
            ax.axvline(train_len, color="gray", linestyle=":", lw=1)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_title(f"{panel} ({len(members)})", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
        plain_ticks(ax, sorted(int(x) for x in xs_all) if logx and len(xs_all) <= 8 else None)
        legend(ax)
    fig.suptitle(title, fontsize=11)
    return _png(fig, tight=False)


def _every(xs: list[float]) -> int:
    return max(1, len(xs) // 8)


def plot_ppl(results: dict[str, Any], protocol: str | None = None) -> bytes:
    """PNG: perplexity vs evaluation length (log-log) for one protocol (default the first),
    one panel per family, the 95% interval shaded with several seeds; dotted: train length."""
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    protocol = protocol or protocols[0]

    def curve(entry: dict[str, Any]) -> Any:
        points = sorted((int(n), v) for n, v in entry["ppl"][protocol].items() if v is not None)
        if not points:
            return None
        return [x for x, _ in points], [m for _, (m, _) in points], [h for _, (_, h) in points]

    png = _plot_families(
        summarize(results),
        curve,
        f"Perplexity vs evaluation length ({protocol}; trained at {results['train_len']}, "
        "dotted line; shaded: 95% interval over seeds, in panels of ≤ 6 methods)",
        "evaluation length (tokens)",
        f"perplexity ({results['tokenizer']} tokens)",
        results["train_len"],
    )
    assert png is not None
    return png


def plot_positions(results: dict[str, Any]) -> bytes | None:
    """PNG: mean loss at each position of the longest windows (first seed), one line per
    method, averaged within quarter-octave bins of position, one panel per family."""

    first: dict[str, dict[str, Any]] = {}
    for run in results["runs"]:
        first.setdefault(run["method"], run)
    length = None

    def curve(run: dict[str, Any]) -> Any:
        nonlocal length
        for n, nll in (run.get("position_nll") or {}).items():
            if nll:
                length = int(n)
                xs, ys = geometric_bins(nll, per_octave=4)
                return xs, ys, None
        return None

    entries = list(first.values())
    if not any(curve(e) for e in entries):
        return None
    return _plot_families(
        entries,
        curve,
        f"Loss by position in windows of {length} tokens (first seed; dotted: train length)",
        "position in window",
        "mean loss (nats)",
        results["train_len"],
        logy=False,
    )


def loss_curves(results: dict[str, Any], out_dir: Path | None = None) -> dict[str, list]:
    """Method -> [[step, loss], ...] of its first seed: the run's `loss_curve` in results.json,
    else its run directory's log.csv under out_dir/runs (benches from before `loss_curve`)."""
    curves: dict[str, list] = {}
    for run in results["runs"]:
        if run.get("extends") or run["method"] in curves:
            continue
        if run.get("loss_curve"):
            curves[run["method"]] = run["loss_curve"]
        elif out_dir is not None:
            log = out_dir / "runs" / f"{run['method']}-seed{run.get('seed', 0)}" / "log.csv"
            if log.is_file():
                with open(log, newline="", encoding="utf-8") as f:
                    losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
                size = max(1, -(-len(losses) // 100))
                curves[run["method"]] = [
                    [
                        min(i + size, len(losses)),
                        sum(losses[i : i + size]) / len(losses[i : i + size]),
                    ]
                    for i in range(0, len(losses), size)
                ]
    return curves


def plot_losses(results: dict[str, Any], out_dir: Path | None = None) -> bytes | None:
    """PNG: training loss by step (first seed, mean over ≤ 100 equal bins of steps), one
    panel per family; None when no run recorded its losses."""
    curves = loss_curves(results, out_dir)
    if not curves:
        return None
    entries = [r for r in results["runs"] if r["method"] in curves and not r.get("extends")]
    seen: set[str] = set()
    unique = [e for e in entries if not (e["method"] in seen or seen.add(e["method"]))]

    def curve(run: dict[str, Any]) -> Any:
        points = curves.get(run["method"])
        return ([p[0] for p in points], [p[1] for p in points], None) if points else None

    return _plot_families(
        unique,
        curve,
        "Training loss (first seed)",
        "step",
        "train loss (nats per token)",
        None,
        logy=False,
        logx=False,
    )


def _png(fig: Any, tight: bool = True) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches=None if tight else "tight")
    plt.close(fig)
    return buf.getvalue()
