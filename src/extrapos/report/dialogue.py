"""Report of the dialogue suite, rendered from its `results.json` alone (no torch).

Per method, every figure is the mean over seeds ± the half-width of a 95% Student-t interval
(`extrapos.core.stats.mean_ci95`). History gain is NLL(k = 0) − NLL(k): nats per response token
the history saves (positive = the model uses it); by length it compares the whole-history NLL
of the turns in a bin with the same turns' k = 0 NLL.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from extrapos.core.files import write_bytes, write_text
from extrapos.core.plotting import figure_png as _png
from extrapos.core.stats import mean_ci95
from extrapos.report.tables import markdown_table

__all__ = [
    "dialogue_tables",
    "plot_dialogue",
    "plot_generation_runs",
    "summarize_dialogue",
    "write_dialogue_report",
]

HISTORY_PLOT = "dialogue_history.png"
RECALL_PLOT = "dialogue_recall.png"
GENERATION_PLOT = "dialogue_generation.png"


def _stat(values: list[float | None]) -> tuple[float, float | None] | None:
    kept = [v for v in values if v is not None]
    return mean_ci95(kept) if kept else None


def _by_method(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        if run.get("kind", "dialogue") == "dialogue":
            out.setdefault(run["method"], []).append(run)
    return out


def _gain_k(run: dict[str, Any], k: str) -> float | None:
    ks = run["history"]["k"]
    return None if ks.get("0") is None or ks.get(k) is None else ks["0"] - ks[k]


def _gain_bin(run: dict[str, Any], b: str) -> float | None:
    base = (run.get("history_by_length_k0") or {}).get(b)
    full = run["history"]["by_length"].get(b)
    return None if base is None or full is None else base - full


def summarize_dialogue(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method: seeds, NLL and gain per k, gain per length bin, recall per distance,
    generation curves (each (mean, half-width) or None)."""
    out = []
    for method, runs in _by_method(results).items():
        ks = list(runs[0]["history"]["k"])
        bins = list(runs[0]["history"]["by_length"])
        dists = list(runs[0]["recall"])
        gen = [r["generation"] for r in runs if r.get("generation")]
        curves: dict[str, list[Any]] = {}
        for key in ("rep_n", "distinct_n", "true_nll", "reference_rep_n"):
            if gen:
                width = min(len(g[key]) for g in gen)
                curves[key] = [_stat([g[key][i] for g in gen]) for i in range(width)]
        out.append(
            {
                "method": method,
                "seeds": [r["seed"] for r in runs],
                "nll": {k: _stat([r["history"]["k"][k] for r in runs]) for k in ks},
                "gain": {k: _stat([_gain_k(r, k) for r in runs]) for k in ks},
                "gain_by_length": {b: _stat([_gain_bin(r, b) for r in runs]) for b in bins},
                "recall": {d: _stat([r["recall"].get(d) for r in runs]) for d in dists},
                "positions": gen[0]["positions"][: len(curves.get("rep_n", []))] if gen else [],
                "generation": curves,
                "chance": runs[0]["chance"],
                "train_seconds": _stat([r.get("train_seconds") for r in runs]),
                "eval_seconds": _stat(
                    [r.get("eval_seconds", 0) + r.get("generation_seconds", 0) for r in runs]
                ),
            }
        )
    return out


def _cell(entry: tuple[float, float | None] | None, digits: int = 3) -> str:
    if entry is None:
        return "n/a"
    mean, half = entry
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def dialogue_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the report's tables."""
    summary = summarize_dialogue(results)
    if not summary:
        return []
    first = summary[0]
    L = results["train_len"]
    tables = [
        (
            "Response NLL given the last k turns (nats/token; lower is better)",
            ["method", *[f"k={k}" for k in first["nll"]]],
            [[s["method"], *[_cell(v) for v in s["nll"].values()]] for s in summary],
        ),
        (
            f"History gain by history length (NLL k=0 − NLL whole history; bins in L = {L})",
            ["method", *[f"{b} L" for b in first["gain_by_length"]]],
            [[s["method"], *[_cell(v) for v in s["gain_by_length"].values()]] for s in summary],
        ),
        (
            f"Recall across turns by distance (accuracy; chance {first['chance']:.2f})",
            ["method", *[f"{d}" for d in first["recall"]]],
            [[s["method"], *[_cell(v, 2) for v in s["recall"].values()]] for s in summary],
        ),
    ]
    gen_rows = []
    for s in summary:
        g = s["generation"]
        if not g:
            continue
        gen_rows.append(
            [
                s["method"],
                _cell(g["rep_n"][0]),
                _cell(g["rep_n"][-1]),
                _cell(g["reference_rep_n"][-1]),
                _cell(g["distinct_n"][0]),
                _cell(g["distinct_n"][-1]),
                _cell(g["true_nll"][0]),
                _cell(g["true_nll"][-1]),
            ]
        )
    if gen_rows:
        last = first["positions"][-1] if first["positions"] else "?"
        tables.append(
            (
                f"Long generation: first window (position {first['positions'][0]}) vs last "
                f"(position {last})",
                [
                    "method",
                    "rep-n first",
                    "rep-n last",
                    "rep-n last (true text)",
                    "distinct first",
                    "distinct last",
                    "true NLL first",
                    "true NLL last",
                ],  # fmt: skip
                gen_rows,
            )
        )
    tables.append(
        (
            "Time per run (seconds, this machine)",
            ["method", "train", "probes"],
            [
                [s["method"], _cell(s["train_seconds"], 0), _cell(s["eval_seconds"], 0)]
                for s in summary
            ],  # fmt: skip
        )
    )
    return tables


def _errorbar(ax: Any, xs: list[Any], entries: list[Any], label: str, **kw: Any) -> None:
    pts = [(x, e) for x, e in zip(xs, entries, strict=True) if e is not None]
    if not pts:
        return
    ys = [e[0] for _, e in pts]
    errs = [e[1] or 0.0 for _, e in pts]
    ax.errorbar([x for x, _ in pts], ys, yerr=errs, marker="o", ms=3, capsize=2, label=label, **kw)


def plot_dialogue(results: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """(history PNG: gain vs k and vs history length; recall PNG: accuracy vs distance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize_dialogue(results)
    if not summary:
        return None
    L = results["train_len"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.6), dpi=110)
    for s in summary:
        ks = list(s["gain"])
        _errorbar(a1, list(range(len(ks))), list(s["gain"].values()), s["method"])
        bins = list(s["gain_by_length"])
        _errorbar(a2, list(range(len(bins))), list(s["gain_by_length"].values()), s["method"])
    a1.set_xticks(range(len(ks)), [str(k) for k in ks])
    a1.set_xlabel("history turns k")
    a1.set_ylabel("gain: NLL(k=0) − NLL(k)  (nats/token)")
    a1.set_title("History gain vs turns of history")
    a2.set_xticks(range(len(bins)), [f"{b}" for b in bins])
    a2.set_xlabel(f"history length (multiples of L = {L} tokens)")
    a2.set_ylabel("gain of the whole history (nats/token)")
    a2.set_title("History gain vs history length")
    for ax in (a1, a2):
        ax.axhline(0, color="gray", lw=0.8)
        ax.grid(True, alpha=0.3)
    a2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    history = _png(fig)

    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    for s in summary:
        ds = [int(d) for d in s["recall"]]
        _errorbar(ax, ds, list(s["recall"].values()), s["method"])
    ax.axhline(summary[0]["chance"], color="gray", ls=":", label="chance")
    ax.axvline(L, color="gray", ls="--", lw=0.8, label="train length")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("distance from the fact to the answer (tokens)")
    ax.set_ylabel("accuracy (right answer ranked first)")
    ax.set_title("Recall across turns")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return history, _png(fig)


def plot_generation_runs(
    curves_by_method: dict[str, list[dict[str, Any]]], train_len: int
) -> bytes:
    """PNG: rep-n, distinct-n (the true text's levels dotted) and the true continuation's NLL
    vs generated position, one line per method (mean ± 95% over its generation records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6), dpi=110)
    keys = ("rep_n", "distinct_n", "true_nll")
    for i, (method, gens) in enumerate(curves_by_method.items()):
        width = min(len(g["rep_n"]) for g in gens)
        xs = gens[0]["positions"][:width]
        for ax, key in zip(axes, keys, strict=True):
            entries = [_stat([g[key][j] for g in gens]) for j in range(width)]
            _errorbar(ax, xs, entries, method)
            ref = f"reference_{key}"
            if i == 0 and ref in gens[0]:  # the true text's level, once
                level = [_stat([g[ref][j] for g in gens]) for j in range(width)]
                ax.plot(xs, [e[0] if e else None for e in level], ":", color="gray",
                        label="true text")  # fmt: skip
    n = next(iter(curves_by_method.values()))[0]["n"]
    axes[0].set_ylabel(f"rep-{n}: share of the window's {n}-grams seen before")
    axes[0].set_title("Repetition of sampled text vs position")
    axes[1].set_ylabel(f"distinct-{n}: distinct / all {n}-grams in the window")
    axes[1].set_title("Diversity of sampled text vs position")
    axes[2].set_ylabel("NLL of the true continuation (nats/token)")
    axes[2].set_title("Model NLL of the true text vs position")
    for ax in axes:
        ax.axvline(train_len, color="gray", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position (tokens; windows of generated text)")
        ax.grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def render_dialogue_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    lines = [
        "# extrapos dialogue bench",
        "",
        f"Corpus `{results['corpus']}` (test dialogues also in train removed: "
        f"{results.get('duplicates_removed', {}).get('test', 'n/a')}), tokenizer "
        f"`{results['tokenizer']}`, train length L = {results['train_len']}; mean ± 95% "
        "interval over seeds.",
        "",
    ]
    for title, header, rows in dialogue_tables(results):
        lines += [f"## {title}", "", markdown_table(header, rows), ""]
    for title, name in plots.items():
        lines += [f"![{title}]({name})", ""]
    lines += [
        "## Settings",
        "",
        "```",
        *(f"{k}: {v}" for k, v in results["settings"].items()),
        "```",
    ]
    return "\n".join(lines) + "\n"


def write_dialogue_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """report.md, report.html and the PNG plots of a dialogue bench."""
    out_dir = Path(out_dir)
    images: dict[str, tuple[str, bytes]] = {}
    plots = plot_dialogue(results)
    if plots is not None:
        images["History gain"] = (HISTORY_PLOT, plots[0])
        images["Recall across turns"] = (RECALL_PLOT, plots[1])
    gens: dict[str, list[dict[str, Any]]] = {}
    for method, runs in _by_method(results).items():
        got = [r["generation"] for r in runs if r.get("generation")]
        if got:
            gens[method] = got
    if gens:
        images["Long generation"] = (
            GENERATION_PLOT,
            plot_generation_runs(gens, results["train_len"]),
        )
    for name, png in images.values():
        write_bytes(out_dir / name, png)
    md = render_dialogue_markdown(results, {t: n for t, (n, _) in images.items()})
    write_text(out_dir / "report.md", md)
    esc = html.escape
    body = "".join(
        f"<h2>{esc(t)}</h2><table>"
        + "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>"
        for t, header, rows in dialogue_tables(results)
    )  # fmt: skip
    figs = "".join(
        f'<figure><img alt="{esc(t)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"/><figcaption>{esc(t)}</figcaption></figure>'
        for t, (_, png) in images.items()
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
        "img{max-width:100%}"
    )
    write_text(
        out_dir / "report.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>extrapos dialogue bench"
        f"</title><style>{style}</style></head><body><h1>extrapos dialogue bench</h1>"
        f"<p>Corpus <code>{esc(results['corpus'])}</code>, train length "
        f"{results['train_len']}.</p>{body}{figs}</body></html>\n",
    )
