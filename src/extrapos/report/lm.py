"""The bench report, rendered from `results.json` alone (so `extrapos report DIR` can redo it).

Writes report.md, a self-contained report.html (plots embedded), results.csv (one row per
method × seed × protocol × length) and PNG plots. With several seeds a method's entry is the
mean over seeds ± the half-width of a 95% Student-t interval.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.files import read_json, write_bytes, write_json, write_text
from extrapos.core.plotting import figure_png
from extrapos.core.results import RECORD_KEYS, record_key
from extrapos.core.stats import geometric_bins, mean_ci95

PPL_PLOT = "ppl_vs_length.png"
POSITION_PLOT = "loss_vs_position.png"


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per method (in order of first appearance): per protocol and length the mean
    perplexity and 95% half-width over seeds, the seeds, and mean costs."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        methods.setdefault(run["method"], []).append(run)
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    summary = []
    for method, runs in methods.items():
        per_protocol: dict[str, dict[str, tuple[float, float | None] | None]] = {}
        for protocol in protocols:
            per_len: dict[str, tuple[float, float | None] | None] = {}
            for length in map(str, results["eval_lens"]):
                values = [
                    v for r in runs if (v := _ppl(r, protocol, length, protocols[0])) is not None
                ]
                per_len[length] = mean_ci95(values) if values else None
            per_protocol[protocol] = per_len
        summary.append(
            {
                "method": method,
                "seeds": [r.get("seed", 0) for r in runs],
                "ppl": per_protocol,
                "extends": runs[0].get("extends"),
                "num_params": runs[0]["num_params"],
                "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
                "tokens_per_second": sum(r["tokens_per_second"] for r in runs) / len(runs),
                "eval_seconds": sum(r.get("eval_seconds", 0) for r in runs) / len(runs),
                "errors": {k: v for r in runs for k, v in (r.get("errors") or {}).items()},
            }
        )
    return summary


def _ppl(run: dict[str, Any], protocol: str, length: str, primary: str) -> float | None:
    by_protocol = run.get("ppl_by_protocol")
    if by_protocol is not None:
        return by_protocol.get(protocol, {}).get(length)
    return run["ppl"].get(length) if protocol == primary else None


def _cell(entry: tuple[float, float | None] | None) -> str:
    if entry is None:
        return "n/a"
    mean, half = entry
    return f"{mean:.3f}" if half is None else f"{mean:.3f} ± {half:.3f}"


def ppl_table(results: dict[str, Any], protocol: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, perplexity at each length, ratio longest / train length."""
    lens = [str(n) for n in results["eval_lens"]]
    train_len = str(results["train_len"])
    header = ["method", *[f"L={n}" for n in lens]]
    if train_len in lens:
        header.append(f"ppl@{lens[-1]} / ppl@{train_len}")
    rows = []
    for entry in summarize(results):
        ppl = entry["ppl"][protocol]
        row = [entry["method"], *[_cell(ppl[n]) for n in lens]]
        if train_len in lens:
            base, last = ppl[train_len], ppl[lens[-1]]
            row.append(f"{last[0] / base[0]:.2f}" if base and last else "n/a")
        rows.append(row)
    return header, rows


def cost_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Parameters, training time and throughput, evaluation time, and (where the bench
    measured them) time and peak-memory rise of one forward at the longest length."""
    from extrapos.report.probes import cost_columns

    header = ["method", "params", "train s", "train tokens/s", "eval s", "seeds"]
    measured = cost_columns(results)
    if measured:
        longest = max(results["eval_lens"])
        header += [f"forward s @ {longest}", f"peak MiB @ {longest}"]
    rows = []
    for e in summarize(results):
        row = [
            e["method"],
            f"{e['num_params']:,}",
            "—" if e["extends"] else f"{e['train_seconds']:.0f}",
            "—" if e["extends"] else f"{e['tokens_per_second']:,.0f}",
            f"{e['eval_seconds']:.1f}",
            ",".join(map(str, e["seeds"])),
        ]
        if measured:
            row += list(measured.get(e["method"], ("—", "—")))
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_ppl(results: dict[str, Any]) -> bytes:
    """PNG: perplexity vs evaluation length (log-log), one line per method with its 95%
    interval shaded; one panel per protocol. RoPE extensions are dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    fig, axes = plt.subplots(
        1, len(protocols), figsize=(7 * len(protocols), 4.8), dpi=110, squeeze=False
    )
    summary = summarize(results)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        for entry in summary:
            points = [(int(n), v) for n, v in entry["ppl"][protocol].items() if v is not None]
            if not points:
                continue
            points.sort()
            xs = [x for x, _ in points]
            means = [m for _, (m, _) in points]
            style = "--" if entry["extends"] else "-"
            (line,) = ax.plot(xs, means, style, marker="o", ms=3, label=entry["method"])
            halves = [h for _, (_, h) in points]
            if all(h is not None for h in halves):
                lo = [m - h for m, h in zip(means, halves, strict=True)]
                hi = [m + h for m, h in zip(means, halves, strict=True)]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axvline(results["train_len"], color="gray", linestyle=":", label="train length")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel(f"perplexity ({results['tokenizer']} tokens)")
        ax.set_title(f"{protocol}: train {results['train_len']}, test long")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure_png(fig)


def plot_positions(results: dict[str, Any]) -> bytes | None:
    """PNG: mean loss at each position of the longest windows (first seed), one line per
    method, averaged within quarter-octave bins of position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, seen = [], set()
    for run in results["runs"]:
        if run["method"] in seen:
            continue
        for length, nll in (run.get("position_nll") or {}).items():
            if nll:
                curves.append((run["method"], int(length), nll, run.get("extends")))
                seen.add(run["method"])
    if not curves:
        return None

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for method, _length, nll, extends in curves:
        xs, ys = geometric_bins(nll, per_octave=4)  # log-x: average within quarter octaves
        ax.plot(xs, ys, "--" if extends else "-", label=method)
    ax.axvline(results["train_len"], color="gray", linestyle=":", label="train length")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title(f"Loss by position, windows of {curves[0][1]} tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure_png(fig)


def _notes(results: dict[str, Any]) -> list[str]:
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    notes = [
        f"Protocols: {', '.join(protocols)} (nonoverlap: each window scored from its own start; "
        f"sliding: stride L/2, every target with ≥ L/2 tokens of context). The same "
        f"{_scored(results)} test targets at every length that divides the longest.",
    ]
    if any(len(e["seeds"]) > 1 for e in summarize(results)):
        notes.append("Several seeds: mean ± half-width of the 95% Student-t interval.")
    if any(r["method"] == "learned" for r in results["runs"]):
        notes.append(
            "`learned`: its table is sized to the longest evaluation length; rows past the "
            "train length are never trained."
        )
    if any(r.get("extends") for r in results["runs"]):
        notes.append(
            "`rope+<name>`: the trained `rope` model evaluated with that inference-time "
            "extension, set for each evaluation length (factor = length / train length; "
            "windows = train length / 2); no training."
        )
    for entry in summarize(results):
        for length, error in entry["errors"].items():
            notes.append(f"`{entry['method']}` at L={length}: {error}")
    if results.get("costs"):
        notes.append(
            "Cost: `forward s` and `peak MiB` are one inference forward of a fresh model at the "
            "longest length, in a fresh process (peak resident-memory rise over the loaded "
            "model); train tokens/s and eval s are wall time of this bench on this machine."
        )
    return notes


def _probe_sections(
    results: dict[str, Any],
) -> list[tuple[str, str, list[tuple[list[str], list[list[str]]]], list[str]]]:
    """(title, intro, tables, notes) of the task and passkey sections present in results."""
    from extrapos.report.probes import (
        grid_table,
        passkey_grid_by_depth,
        passkey_grid_by_length,
        probe_errors,
        task_grids,
    )

    sections = []
    grids = task_grids(results)
    if grids:
        ts = results.get("task_settings") or {}
        shape = ts.get("model") or {}
        intro = (
            f"Exact-match accuracy by problem size. A fresh GPT ({shape.get('n_layer')} layers, "
            f"d_model {shape.get('d_model')}, {shape.get('n_head')} heads) per method, "
            f"task and seed, trained {ts.get('task_steps')} steps on sizes 1..{ts.get('task_train_len')}; "
            f"{ts.get('task_samples')} problems per size, the same for every method."
        )
        tables = [grid_table(grid, f"{task}", "n=") for task, grid in grids.items()]
        sections.append(("Synthetic tasks", intro, tables, []))
    if results.get("passkey_runs"):
        ps = results.get("passkey_settings") or {}
        by_length = passkey_grid_by_length(results)
        longest, by_depth = passkey_grid_by_depth(results)
        intro = (
            f"Each trained model (a copy) fine-tuned {ps.get('passkey_steps')} steps on passkey "
            f"prompts of {results['train_len']} tokens, then asked for a 5-digit key at every "
            f"length and depth ({ps.get('passkey_trials')} keys per cell; no intro sentence). "
            "Accuracy: the whole key right (teacher-forced argmax). `rope+<name>`: the "
            "fine-tuned `rope` copy with that extension."
        )
        tables = []
        if by_length:
            tables = [
                grid_table(by_length, "whole key (mean over depths)", "L="),
                grid_table(
                    passkey_grid_by_length(results, "digit_accuracy"),
                    "fraction of key tokens right",
                    "L=",
                ),
                grid_table(by_depth, f"whole key at L={longest}, by depth %", "d="),
            ]
        sections.append(("Passkey retrieval", intro, tables, []))
    errors = probe_errors(results)
    if errors and sections:
        title, intro, tables, _ = sections[-1]
        sections[-1] = (title, intro, tables, errors)
    return sections


def _scored(results: dict[str, Any]) -> str:
    counts = {
        n
        for run in results["runs"]
        for n in (run.get("tokens_scored") or {}).values()
        if n is not None
    }
    return "/".join(f"{n:,}" for n in sorted(counts)) or "?"


def write_csv(results: dict[str, Any], path: Path) -> None:
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["method", "seed", "protocol", "length", "ppl", "bits_per_byte", "tokens_scored"]
    )
    for run in results["runs"]:
        for protocol in protocols:
            for length in map(str, results["eval_lens"]):
                bpb = (
                    (run.get("bits_per_byte") or {}).get(length)
                    if protocol == protocols[0]
                    else None
                )
                scored = (
                    (run.get("tokens_scored") or {}).get(length)
                    if protocol == protocols[0]
                    else None
                )
                writer.writerow(
                    [run["method"], run.get("seed", 0), protocol, length,
                     _ppl(run, protocol, length, protocols[0]), bpb, scored]
                )  # fmt: skip
    write_text(path, buf.getvalue())


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    parts = [
        "# extrapos bench report",
        "",
        f"Corpus `{results['corpus']}` (sha256 `{results.get('corpus_hash', '?')[:16]}…`), "
        f"tokenizer `{results['tokenizer']}`, trained at length {results['train_len']}, "
        f"evaluated at {', '.join(map(str, results['eval_lens']))}"
        + (f"; preset `{results['preset']}`." if results.get("preset") else "."),
        "",
    ]
    for protocol in protocols:
        parts += [f"## Perplexity vs evaluation length ({protocol})", ""]
        parts += [markdown_table(*ppl_table(results, protocol)), ""]
    parts += [*[f"- {note}" for note in _notes(results)], ""]
    for title, name in plots.items():
        parts += [f"![{title}]({name})", ""]
    for title, intro, tables, notes in _probe_sections(results):
        parts += [f"## {title}", "", intro, ""]
        for table in tables:
            parts += [markdown_table(*table), ""]
        parts += [*[f"- {note}" for note in notes], *([""] if notes else [])]
    parts += ["## Cost", "", markdown_table(*cost_table(results)), ""]
    parts += ["## Configuration", "", "```", *_settings_lines(results)]
    parts += ["```", "", "## Environment", "", "```"]
    parts += [f"{k}: {v}" for k, v in results.get("environment", {}).items()]
    parts += ["```", "", "All numbers are also in results.csv and results.json.", ""]
    return "\n".join(parts)


def _settings_lines(results: dict[str, Any]) -> list[str]:
    groups = [results.get("settings", {})]
    if results.get("task_runs"):
        groups.append(results.get("task_settings") or {})
    if results.get("passkey_runs"):
        groups.append(results.get("passkey_settings") or {})
    return [f"{k}: {v}" for group in groups for k, v in group.items()]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    out = "<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
    for row in rows:
        out += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
    return out + "</table>"


def render_html(results: dict[str, Any], images: dict[str, bytes]) -> str:
    esc = html.escape
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    tables = "".join(
        f"<h2>Perplexity vs evaluation length ({esc(p)})</h2>" + _html_table(*ppl_table(results, p))
        for p in protocols
    )
    figs = "".join(
        f'<figure><img alt="{esc(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"/><figcaption>{esc(title)}</figcaption></figure>'
        for title, png in images.items()
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in _notes(results))
    probes = "".join(
        f"<h2>{esc(title)}</h2><p>{esc(intro)}</p>"
        + "".join(_html_table(*t) for t in tables)
        + ("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "")
        for title, intro, tables, notes in _probe_sections(results)
    )
    settings = esc("\n".join(_settings_lines(results)))
    env = esc("\n".join(f"{k}: {v}" for k, v in results.get("environment", {}).items()))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>extrapos bench report</title>"
        f"<style>{style}</style></head><body><h1>extrapos bench report</h1>"
        f"<p>Corpus <code>{esc(results['corpus'])}</code>, tokenizer "
        f"<code>{esc(results['tokenizer'])}</code>, train length {results['train_len']}.</p>"
        f"{tables}<ul>{notes}</ul>{figs}{probes}<h2>Cost</h2>{_html_table(*cost_table(results))}"
        f"<h2>Configuration</h2><pre>{settings}</pre><h2>Environment</h2><pre>{env}</pre>"
        f"</body></html>\n"
    )


def write_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write report.md, report.html, results.csv and the PNG plots into out_dir."""
    out_dir = Path(out_dir)
    images = {"Perplexity vs evaluation length": plot_ppl(results)}
    files = {"Perplexity vs evaluation length": PPL_PLOT}
    positions = plot_positions(results)
    if positions is not None:
        images["Loss by position in the longest windows"] = positions
        files["Loss by position in the longest windows"] = POSITION_PLOT
    from extrapos.report import probes as rp

    for title, name, png in (
        ("Task accuracy by size", rp.TASK_PLOT, rp.plot_tasks(results)),
        ("Passkey accuracy", rp.PASSKEY_PLOT, rp.plot_passkey(results)),
    ):
        if png is not None:
            images[title], files[title] = png, name
    for title, png in images.items():
        write_bytes(out_dir / files[title], png)
    write_csv(results, out_dir / "results.csv")
    for name, text in (
        ("tasks.csv", rp.tasks_csv(results)),
        ("passkey.csv", rp.passkey_csv(results)),
        ("costs.csv", rp.costs_csv(results)),
    ):
        if text is not None:
            write_text(out_dir / name, text)
    write_text(out_dir / "report.md", render_markdown(results, files))
    write_text(out_dir / "report.html", render_html(results, images))


def merge(dirs: list[str | Path]) -> dict[str, Any]:
    """Combine the runs of several bench directories with the same corpus, lengths and
    settings (e.g. seeds or methods run separately); later directories win on duplicates."""
    merged: dict[str, Any] | None = None
    stages: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {s: {} for s in RECORD_KEYS}
    for d in dirs:
        results = read_json(Path(d) / "results.json", "bench results")
        if merged is None:
            merged = results
        else:
            for key in ("corpus_hash", "train_len", "eval_lens", "settings"):
                if results.get(key) != merged.get(key):
                    raise UserError(
                        f"cannot merge {d}: its {key} differs from {dirs[0]}'s; merge only "
                        f"benches run with the same settings"
                    )
            for key in ("task_settings", "passkey_settings"):
                stage = "task_runs" if key == "task_settings" else "passkey_runs"
                if results.get(stage) and merged.get(stage) and results[key] != merged[key]:
                    raise UserError(
                        f"cannot merge {d}: its {key} differ from {dirs[0]}'s; merge only "
                        f"benches run with the same task and passkey settings"
                    )
                if results.get(stage) and not merged.get(stage):
                    merged[key] = results[key]
        for stage in RECORD_KEYS:
            for record in results.get(stage, []):
                stages[stage][record_key(stage, record)] = record
    assert merged is not None
    return {**merged, **{stage: list(recs.values()) for stage, recs in stages.items()}}


def rerender(dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Re-render the report of one bench directory, or merge several into `out`."""
    if len(dirs) > 1 and out is None:
        raise UserError("merging several bench directories needs --out DIR for the result")
    target = Path(out) if out is not None else Path(dirs[0])
    results = merge(dirs)
    if out is not None:
        write_json(target / "results.json", results)
    write_report(results, target)
    return target
