"""The bench report: a Markdown and a self-contained HTML page with tables and plots, from
`results.json` alone (so `extrapos report DIR` can re-render it)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from extrapos.io import read_json, write_bytes, write_text

PPL_PLOT = "ppl_vs_length.png"
POSITION_PLOT = "loss_vs_position.png"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ppl_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, ppl at each eval length, ratio longest/train length, cost."""
    lens = [str(n) for n in results["eval_lens"]]
    train_len = str(results["train_len"])
    header = ["method", *[f"L={n}" for n in lens], f"ppl@{lens[-1]} / ppl@{train_len}"]
    header += ["params", "train s", "train tok/s"]
    rows = []
    for run in results["runs"]:
        ppl = run["ppl"]
        base, last = ppl.get(train_len), ppl.get(lens[-1])
        ratio = last / base if base and last else None
        rows.append(
            [
                run["method"],
                *[_fmt(ppl.get(n)) for n in lens],
                _fmt(ratio, 2),
                f"{run['num_params']:,}",
                f"{run['train_seconds']:.0f}",
                f"{run['tokens_per_second']:,}",
            ]
        )
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_ppl(results: dict[str, Any]) -> bytes:
    """PNG: perplexity vs evaluation length (log x), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for run in results["runs"]:
        points = [(int(n), p) for n, p in run["ppl"].items() if p is not None]
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=run["method"])
    ax.axvline(results["train_len"], color="gray", linestyle=":", label="train length")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel(f"perplexity ({results['tokenizer']} tokens)")
    ax.set_title(f"Train short ({results['train_len']}), test long — {results['corpus']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_positions(results: dict[str, Any]) -> bytes | None:
    """PNG: mean loss at each position of the longest windows, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for run in results["runs"]:
        for length, nll in (run.get("position_nll") or {}).items():
            if nll:
                curves.append((run["method"], int(length), nll))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, _length, nll in curves:
        # smooth over a window of 16 positions: single positions are noisy
        w = 16
        xs = list(range(0, len(nll) - w + 1, w))
        ys = [sum(v for v in nll[i : i + w] if v is not None) / w for i in xs]
        ax.plot([x + w / 2 for x in xs], ys, label=method)
    ax.axvline(results["train_len"], color="gray", linestyle=":", label="train length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(f"Loss by position, windows of {curves[0][1]} tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _notes(results: dict[str, Any]) -> list[str]:
    notes = [
        f"Protocol: {results.get('protocol', 'nonoverlap')} windows (each window scored from its "
        f"own start); the same {_scored(results)} test targets at every length that divides the longest.",
    ]
    if any(r["method"] == "learned" for r in results["runs"]):
        notes.append(
            "`learned`: its table is sized to the longest evaluation length; rows past the "
            "train length are never trained."
        )
    for run in results["runs"]:
        for length, error in (run.get("errors") or {}).items():
            notes.append(f"`{run['method']}` at L={length}: {error}")
    return notes


def _scored(results: dict[str, Any]) -> str:
    counts = {
        n
        for run in results["runs"]
        for n in (run.get("tokens_scored") or {}).values()
        if n is not None
    }
    return "/".join(f"{n:,}" for n in sorted(counts)) or "?"


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    header, rows = ppl_table(results)
    env = results.get("environment", {})
    settings = results.get("settings", {})
    parts = [
        "# extrapos bench report",
        "",
        f"Corpus `{results['corpus']}` (sha256 `{results.get('corpus_hash', '?')[:16]}…`), "
        f"tokenizer `{results['tokenizer']}`, trained at length {results['train_len']}, "
        f"evaluated at {', '.join(map(str, results['eval_lens']))}.",
        "",
        "## Perplexity vs evaluation length",
        "",
        markdown_table(header, rows),
        "",
        *[f"- {note}" for note in _notes(results)],
        "",
    ]
    for title, name in plots.items():
        parts += [f"![{title}]({name})", ""]
    parts += [
        "## Configuration",
        "",
        "```",
        *[f"{k}: {v}" for k, v in settings.items()],
        "```",
        "",
        "## Environment",
        "",
        "```",
        *[f"{k}: {v}" for k, v in env.items()],
        "```",
        "",
    ]
    return "\n".join(parts)


def render_html(results: dict[str, Any], images: dict[str, bytes]) -> str:
    header, rows = ppl_table(results)
    esc = html.escape
    table = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    for row in rows:
        table += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
    table += "</table>"
    figs = "".join(
        f'<figure><img alt="{esc(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"/><figcaption>{esc(title)}</figcaption></figure>'
        for title, png in images.items()
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in _notes(results))
    settings = esc("\n".join(f"{k}: {v}" for k, v in results.get("settings", {}).items()))
    env = esc("\n".join(f"{k}: {v}" for k, v in results.get("environment", {}).items()))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>extrapos bench report</title>"
        f"<style>{style}</style></head><body><h1>extrapos bench report</h1>"
        f"<p>Corpus <code>{esc(results['corpus'])}</code>, tokenizer "
        f"<code>{esc(results['tokenizer'])}</code>, train length {results['train_len']}.</p>"
        f"<h2>Perplexity vs evaluation length</h2>{table}<ul>{notes}</ul>{figs}"
        f"<h2>Configuration</h2><pre>{settings}</pre><h2>Environment</h2><pre>{env}</pre>"
        f"</body></html>\n"
    )


def write_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write report.md, report.html and the PNG plots into out_dir."""
    out_dir = Path(out_dir)
    images = {"Perplexity vs evaluation length": plot_ppl(results)}
    positions = plot_positions(results)
    if positions is not None:
        images["Loss by position in the longest windows"] = positions
    names = dict(zip(images, (PPL_PLOT, POSITION_PLOT), strict=False))
    for title, png in images.items():
        write_bytes(out_dir / names[title], png)
    write_text(out_dir / "report.md", render_markdown(results, {t: names[t] for t in images}))
    write_text(out_dir / "report.html", render_html(results, images))


def rerender(run_dir: str | Path) -> None:
    """Re-render the report of a bench directory from its results.json."""
    write_report(read_json(Path(run_dir) / "results.json", "bench results"), run_dir)
