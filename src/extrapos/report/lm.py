"""The bench report, rendered from `results.json` alone (so `extrapos report DIR` can redo it).

Writes report.md, a self-contained report.html (plots embedded), results.csv (one row per
method × seed × protocol × length) and PNG plots. With several seeds a method's entry is the
mean over seeds ± the half-width of a 95% Student-t interval.

The per-method tables are `extrapos.report.summary`'s and the plots `extrapos.report.plots`'
(both re-exported here); this module writes the files and the text around the tables.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.files import read_json, write_bytes, write_json, write_text
from extrapos.core.results import RECORD_KEYS, check_results, record_key
from extrapos.report.plots import loss_curves, plot_losses, plot_positions, plot_ppl  # noqa: F401
from extrapos.report.summary import (  # noqa: F401  (re-exported: the report's public names)
    cost_table,
    ppl_table,
    run_ppl,
    summarize,
    summary_table,
)
from extrapos.report.tables import mark_best, markdown_table  # noqa: F401  (re-exported)

PPL_PLOT = "ppl_vs_length.png"
POSITION_PLOT = "loss_vs_position.png"
LOSS_PLOT = "train_loss.png"


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
    if not any(r.get("loss_curve") for r in results["runs"]):
        notes.append(
            "Training-loss curves: this results.json records only each run's final loss (it "
            "predates `loss_curve`); the plot is drawn from `runs/*/log.csv` when they lie "
            "beside it, else left out."
        )
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
                     run_ppl(run, protocol, length, protocols[0]), bpb, scored]
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
        *[f"- {line}" for line in provenance_lines(results)],
        "",
        "Best value per length in **bold** (lowest perplexity; highest accuracy). Plots: one "
        "panel per family of encodings, each method its own colour, line style and marker.",
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


def provenance_lines(results: dict[str, Any]) -> list[str]:
    """Where these numbers came from (Markdown): version, commit, torch, machine, command.
    Benches from before these were recorded show what they have (argv, platform)."""
    env = results.get("environment") or {}
    commit = env.get("git_commit")
    if commit:
        commit = f"`{commit[:12]}`" + (
            " (with uncommitted changes)" if env.get("git_dirty") else ""
        )
    command = env.get("command") or (
        " ".join(["extrapos", *env["argv"][1:]]) if env.get("argv") else None
    )
    items = [
        ("extrapos", f"`{env['extrapos']}`" if env.get("extrapos") else "not recorded"),
        ("git commit", commit or "not recorded (not run from a checkout, or an older bench)"),
        ("torch", f"`{env.get('torch_version') or env.get('torch') or '?'}`"),
        ("machine", env.get("machine") or env.get("platform") or "not recorded"),
        ("threads", str(env.get("threads", "?"))),
        ("date", env.get("date") or "?"),
        ("command", f"`{command}`" if command else "not recorded"),
    ]
    return [f"{k}: {v}" for k, v in items]


def _settings_lines(results: dict[str, Any]) -> list[str]:
    groups = [results.get("settings", {})]
    if results.get("task_runs"):
        groups.append(results.get("task_settings") or {})
    if results.get("passkey_runs"):
        groups.append(results.get("passkey_settings") or {})
    return [f"{k}: {v}" for group in groups for k, v in group.items()]


def write_report(results: dict[str, Any], out_dir: str | Path) -> None:
    """Write report.md, report.html, results.csv and the PNG plots into out_dir."""

    out_dir = Path(out_dir)
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    images: dict[str, bytes] = {}
    files: dict[str, str] = {}
    for i, protocol in enumerate(protocols):
        title = f"Perplexity vs evaluation length ({protocol})"
        images[title] = plot_ppl(results, protocol)
        files[title] = PPL_PLOT if i == 0 else PPL_PLOT.replace(".png", f"_{protocol}.png")
    for title, name, png in (
        ("Training loss", LOSS_PLOT, plot_losses(results, out_dir)),
        ("Loss by position in the longest windows", POSITION_PLOT, plot_positions(results)),
    ):
        if png is not None:
            images[title], files[title] = png, name
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
    write_text(out_dir / "report.html", render_page(results, images))


def merge(dirs: list[str | Path]) -> dict[str, Any]:
    """Combine the runs of several bench directories with the same corpus, lengths and
    settings (e.g. seeds or methods run separately); later directories win on duplicates.
    A file the report cannot read is refused naming its first bad field (`check_results`)."""
    merged: dict[str, Any] | None = None
    stages: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {s: {} for s in RECORD_KEYS}
    for d in dirs:
        path = Path(d) / "results.json"
        results = read_json(path, "bench results")
        check_results(results, str(path))  # a hand-edited file: the bad field named up front
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


def render_page(results: dict[str, Any], images: dict[str, bytes]) -> str:
    """report.html: the text parts made here, laid out by `extrapos.report.page`."""
    from extrapos.report.page import render_html

    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    content = {
        "provenance": provenance_lines(results),
        "ppl_tables": {p: ppl_table(results, p) for p in protocols},
        "notes": _notes(results),
        "probe_sections": _probe_sections(results),
        "settings": _settings_lines(results),
        "cost": cost_table(results),
    }
    return render_html(results, images, content)
