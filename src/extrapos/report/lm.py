"""The bench report, rendered from `results.json` alone (so `extrapos report DIR` can redo it).

Writes report.md, a self-contained report.html (plots embedded), results.csv (one row per
method × seed × protocol × length) and PNG plots. With several seeds a method's entry is the
mean over seeds ± the half-width of a 95% Student-t interval.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.files import read_json, write_bytes, write_json, write_text
from extrapos.core.results import RECORD_KEYS, record_key
from extrapos.core.stats import geometric_bins, mean_ci95
from extrapos.report.tables import mark_best  # noqa: F401  (re-exported)

PPL_PLOT = "ppl_vs_length.png"
POSITION_PLOT = "loss_vs_position.png"
LOSS_PLOT = "train_loss.png"


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
    return header, mark_best(rows, range(1, len(header)), lower=True)


def cost_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Parameters, training time and throughput, evaluation time, and (where the bench
    measured them) time and peak-memory rise of one forward at the longest length."""
    from extrapos.report.probes import cost_columns

    header = ["method", "params", "train s", "train tokens/s", "eval s", "seeds"]
    measured = cost_columns(results)
    if measured:
        longest = max(results["eval_lens"])
        header += [f"forward s @ {longest}", f"peak MiB @ {longest}"]
        width = len(next(iter(measured.values())))
        if width == 3:
            header.append("attention path")
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
            row += list(measured.get(e["method"], ("—",) * width))
        rows.append(row)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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


def summary_table(results: dict[str, Any]) -> str:
    """Method, ppl at the train length and at the longest length (mean over seeds, first
    protocol), their ratio and the rank by the longest length (1 = best)."""
    protocol = (results.get("protocols") or [results.get("protocol", "nonoverlap")])[0]
    train, longest = str(results["train_len"]), str(max(results["eval_lens"]))
    rows = []
    for entry in summarize(results):
        per_len = entry["ppl"][protocol]
        at_l = per_len.get(train) or per_len.get(str(min(results["eval_lens"])))
        at_max = per_len.get(longest)
        rows.append((entry["method"], at_l[0] if at_l else None, at_max[0] if at_max else None))
    ranked = sorted((r for r in rows if r[2] is not None), key=lambda r: r[2])
    rank = {r[0]: i + 1 for i, r in enumerate(ranked)}
    width = max(12, *(len(r[0]) for r in rows)) if rows else 12
    head = (
        f"{'method':<{width}} {'ppl@' + train:>10} {'ppl@' + longest:>11} {'ratio':>7} {'rank':>5}"
    )
    lines = [f"summary ({protocol}, mean over seeds; rank by ppl at {longest}):", head]
    for method, a, b in sorted(rows, key=lambda r: rank.get(r[0], len(rows) + 1)):
        ratio = f"{b / a:.2f}" if a and b else "n/a"
        lines.append(
            f"{method:<{width}} {a if a is None else f'{a:.3f}':>10} "
            f"{b if b is None else f'{b:.3f}':>11} {ratio:>7} {rank.get(method, '-'):>5}"
        )
    return "\n".join(lines)


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
