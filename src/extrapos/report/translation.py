"""Report section of the translation suite: tables and plots from results.json's
`translation` records (mean ± 95% interval over seeds, t · s / √n).

Tables: BLEU / chrF / length ratio per concatenation factor k, and BLEU / length ratio per
source-length bucket. Plots: BLEU vs k and BLEU vs bucket, one line per method with its 95%
band where there are several seeds. Reads plain dicts; imports no model code.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from extrapos.core.files import write_bytes, write_text
from extrapos.core.plotting import figure_png
from extrapos.core.stats import mean_ci95
from extrapos.report.lm import provenance_lines
from extrapos.report.page import inline, standalone_page, table
from extrapos.report.tables import mark_best, markdown_table

BLEU_VS_K_PLOT = "translation_bleu_vs_k.png"
BLEU_VS_BUCKET_PLOT = "translation_bleu_vs_bucket.png"
BUCKET_ORDER = ("1-10", "11-20", "21-40", "41-80", "81+")


def _by_method(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    methods: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        methods.setdefault(r["method"], []).append(r)
    return methods


def _stat(values: list[Any]) -> tuple[float, float | None] | None:
    values = [v for v in values if v is not None]
    return mean_ci95(values) if values else None


def _cell(entry: tuple[float, float | None] | None, digits: int = 1) -> str:
    if entry is None:
        return "—"
    mean, half = entry
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _ks(records: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in records for k in r.get("concat", {})}, key=int)


def concat_table(
    results: dict[str, Any], metric: str = "bleu"
) -> tuple[list[str], list[list[str]]]:
    records = results.get("translation", [])
    ks = _ks(records)
    digits = 2 if metric == "len_ratio" else 1
    header = ["method", *[f"k={k}" for k in ks]]
    rows = []
    for method, runs in _by_method(records).items():
        cells = [
            _cell(_stat([r["concat"].get(k, {}).get(metric) for r in runs]), digits) for k in ks
        ]
        rows.append([method, *cells])
    return header, _best(rows, metric)


def _best(rows: list[list[str]], metric: str) -> list[list[str]]:
    """BLEU and chrF: the highest per column in bold (a length ratio has no best side)."""
    if metric not in ("bleu", "chrf") or not rows:
        return rows
    return mark_best(rows, range(1, len(rows[0])), lower=False)


def bucket_table(
    results: dict[str, Any], metric: str = "bleu"
) -> tuple[list[str], list[list[str]]]:
    records = results.get("translation", [])
    digits = 2 if metric == "len_ratio" else 1
    counts = {
        b: max((r["buckets"].get(b, {}).get("n") or 0) for r in records) for b in BUCKET_ORDER
    }
    buckets = [b for b in BUCKET_ORDER if counts[b]]
    header = ["method", *[f"{b} (n={counts[b]})" for b in buckets]]
    rows = []
    for method, runs in _by_method(records).items():
        cells = [
            _cell(_stat([r["buckets"].get(b, {}).get(metric) for r in runs]), digits)
            for b in buckets
        ]
        rows.append([method, *cells])
    return header, _best(rows, metric)


def summary_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seeds", "BLEU", "chrF", "len ratio", "kept pairs", "train s", "params"]
    rows = []
    for method, runs in _by_method(results.get("translation", [])).items():
        rows.append(
            [
                method,
                str(len(runs)),
                _cell(_stat([r["bleu"] for r in runs])),
                _cell(_stat([r["chrf"] for r in runs])),
                _cell(_stat([r["len_ratio"] for r in runs]), 2),
                f"{runs[0].get('kept_pairs')}/{runs[0].get('train_pairs')}",
                f"{sum(r.get('train_seconds') or 0 for r in runs) / len(runs):.0f}",
                f"{runs[0].get('num_params', 0) / 1e6:.1f}M",
            ]
        )
    return header, mark_best(rows, range(2, 4), lower=False) if rows else rows


def suite_time(results: dict[str, Any]) -> str:
    """How long the suite took: this process's wall time (results.json `wall_seconds`) and
    the runs' own training + decoding seconds (which add up across resumed benches)."""
    records = results.get("translation", [])
    runs = sum(
        (r.get("train_seconds") or 0) + sum((r.get("decode_seconds") or {}).values())
        for r in records
    )  # decode_seconds: {k: seconds} per concatenation factor
    parts = []
    if results.get("wall_seconds") is not None:
        parts.append(f"suite wall time {results['wall_seconds'] / 60:.1f} min")
    parts.append(f"training + decoding of the {len(records)} runs {runs / 60:.1f} min")
    return "; ".join(parts)


def translation_summary(results: dict[str, Any]) -> str:
    """The end-of-bench text table: per method (mean over seeds) corpus BLEU, BLEU and the
    length ratio on the longest concatenation, ranked by that BLEU (1 = best)."""
    records = results.get("translation", [])
    ks = _ks(records)
    longest = ks[-1] if ks else None
    rows = []
    for method, runs in _by_method(records).items():
        bleu = _stat([r["bleu"] for r in runs])
        far = _stat([r["concat"].get(longest, {}).get("bleu") for r in runs]) if longest else None
        ratio = (
            _stat([r["concat"].get(longest, {}).get("len_ratio") for r in runs])
            if longest
            else None
        )
        rows.append((method, len(runs), bleu, far, ratio))
    ranked = sorted(rows, key=lambda r: -(r[3][0] if r[3] else float("-inf")))
    width = max(12, *(len(r[0]) for r in rows)) if rows else 12
    far_head = f"BLEU k={longest}" if longest else "BLEU k=-"

    def num(entry: tuple[float, float | None] | None, digits: int) -> str:
        return "n/a" if entry is None else f"{entry[0]:.{digits}f}"

    if not rows:
        return "summary: no translation records"
    lines = [
        f"summary (mean over seeds; rank by BLEU on {longest} joined sentences):",
        f"{'method':<{width}} {'seeds':>5} {'BLEU':>6} {far_head:>10} {'ratio':>6} {'rank':>5}",
    ]
    for i, (method, n, bleu, far, ratio) in enumerate(ranked, start=1):
        lines.append(
            f"{method:<{width}} {n:>5} {num(bleu, 2):>6} {num(far, 2):>10} {num(ratio, 2):>6} "
            f"{i if far else '-':>5}"
        )
    return "\n".join(lines)


def _plot(results: dict[str, Any], xs: list[str], value: Any, xlabel: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in _by_method(results.get("translation", [])).items():
        points = [(i, _stat([value(r, x) for r in runs])) for i, x in enumerate(xs)]
        points = [(i, s) for i, s in points if s is not None]
        if not points:
            continue
        idx = [i for i, _ in points]
        mean = [s[0] for _, s in points]
        (line,) = ax.plot(idx, mean, marker="o", label=method)
        if all(s[1] is not None for _, s in points):
            lo = [s[0] - s[1] for _, s in points]
            hi = [s[0] + s[1] for _, s in points]
            ax.fill_between(idx, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_bleu_vs_k(results: dict[str, Any]) -> bytes:
    ks = _ks(results.get("translation", []))
    return _plot(
        results, ks, lambda r, k: r["concat"].get(k, {}).get("bleu"),
        "k sentences concatenated into one input", "BLEU vs concatenation factor",
    )  # fmt: skip


def plot_bleu_vs_bucket(results: dict[str, Any]) -> bytes:
    records = results.get("translation", [])
    buckets = [b for b in BUCKET_ORDER if any(r["buckets"].get(b, {}).get("n") for r in records)]
    return _plot(
        results, buckets, lambda r, b: r["buckets"].get(b, {}).get("bleu"),
        "source length (tokens)", "BLEU by source-length bucket",
    )  # fmt: skip


def translation_csv(results: dict[str, Any]) -> str:
    lines = ["method,seed,kind,key,bleu,chrf,len_ratio,n"]
    for r in results.get("translation", []):
        for kind in ("concat", "buckets"):
            for key, s in r.get(kind, {}).items():
                vals = [s.get("bleu"), s.get("chrf"), s.get("len_ratio"), s.get("n")]
                cells = ["" if v is None else f"{v:.6g}" for v in vals]
                lines.append(",".join([r["method"], str(r["seed"]), kind, key, *cells]))
    return "\n".join(lines) + "\n"


def settings_sentence(results: dict[str, Any]) -> str:
    """What every run shared, in one sentence (both reports open with it)."""
    s = results.get("settings", {})
    return (
        f"Data {s.get('data')} {s.get('src')}→{s.get('tgt')}; train pairs with source ≤ "
        f"{s.get('max_src_tokens')} tokens; {s.get('steps')} steps × {s.get('max_tokens')} "
        f"tokens; {s.get('n_layer')}+{s.get('n_layer')} layers, d_model {s.get('d_model')}; "
        f"test {s.get('test_split')} (beam {s.get('beam')}). Mean ± 95% interval over seeds; "
        "the best BLEU / chrF per column in **bold**."
    )


def render_translation_markdown(results: dict[str, Any]) -> str:
    parts = [
        "# Translation: train short, translate long",
        "",
        settings_sentence(results),
        "",
        *[f"- {line}" for line in provenance_lines(results)],
        f"- time: {suite_time(results)}",
        "",
        "## Summary (k = 1)",
        "",
        markdown_table(*summary_table(results)),
        "",
        "## BLEU by concatenation factor k",
        "",
        markdown_table(*concat_table(results, "bleu")),
        "",
        "## Hypothesis / reference length ratio by k",
        "",
        markdown_table(*concat_table(results, "len_ratio")),
        "",
        "## BLEU by source length (tokens)",
        "",
        markdown_table(*bucket_table(results, "bleu")),
        "",
        "## Length ratio by source length",
        "",
        markdown_table(*bucket_table(results, "len_ratio")),
        "",
        f"![BLEU vs k]({BLEU_VS_K_PLOT})",
        "",
        f"![BLEU vs bucket]({BLEU_VS_BUCKET_PLOT})",
        "",
    ]
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_translation_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """report.md, report.html, translation.csv and the two plots into out_dir."""
    import base64

    out_dir = Path(out_dir)
    plots = {
        BLEU_VS_K_PLOT: plot_bleu_vs_k(results),
        BLEU_VS_BUCKET_PLOT: plot_bleu_vs_bucket(results),
    }
    for name, png in plots.items():
        write_bytes(out_dir / name, png)
    write_text(out_dir / "translation.csv", translation_csv(results))
    write_text(out_dir / "report.md", render_translation_markdown(results))
    sections = [
        ("Summary (k = 1)", summary_table(results)),
        ("BLEU by concatenation factor k", concat_table(results, "bleu")),
        ("Hypothesis / reference length ratio by k", concat_table(results, "len_ratio")),
        ("BLEU by source length (tokens)", bucket_table(results, "bleu")),
        ("Length ratio by source length", bucket_table(results, "len_ratio")),
    ]
    intro = settings_sentence(results)
    meta = [*provenance_lines(results), f"time: {suite_time(results)}"]
    body = (
        f"<p>{inline(intro)} Click a column header to sort.</p><ul class='meta'>"
        + "".join(f"<li>{inline(line)}</li>" for line in meta)
        + "</ul>"
        + "".join(f"<h2>{html.escape(t)}</h2>{table(*tab)}" for t, tab in sections)
        + "".join(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode()}"/></figure>'
            for name, png in plots.items()
        )
    )
    write_text(
        out_dir / "report.html", standalone_page("Translation: train short, translate long", body)
    )


__all__ = [
    "bucket_table",
    "concat_table",
    "plot_bleu_vs_bucket",
    "plot_bleu_vs_k",
    "render_translation_markdown",
    "suite_time",
    "summary_table",
    "translation_csv",
    "translation_summary",
    "write_translation_report",
]
