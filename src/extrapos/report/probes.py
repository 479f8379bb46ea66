"""Tables, heatmaps and CSV for the bench's task, passkey and cost results (see
`extrapos.bench.stages`); `extrapos.report.lm` puts them in the report.

Every cell is a mean over seeds (and, for passkey, over depths); tables show the 95% half-width
where there are several seeds.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from extrapos.core.plotting import figure_png
from extrapos.core.stats import mean_ci95

TASK_PLOT = "task_accuracy.png"
PASSKEY_PLOT = "passkey_accuracy.png"

Grid = dict[str, dict[int, list[float]]]  # row -> column -> values over seeds (and depths)


def _grid(records: list[tuple[str, int, float | None]]) -> Grid:
    grid: Grid = {}
    for row, col, value in records:
        cells = grid.setdefault(row, {})
        if value is not None:
            cells.setdefault(col, []).append(value)
        else:
            cells.setdefault(col, [])
    return grid


def task_grids(results: dict[str, Any]) -> dict[str, Grid]:
    """task -> method -> size -> exact-match accuracies over seeds."""
    per_task: dict[str, list[tuple[str, int, float | None]]] = {}
    for run in results.get("task_runs", []):
        for r in run["records"]:
            per_task.setdefault(run["task"], []).append(
                (run["method"], r["length"], r.get("accuracy"))
            )
    return {task: _grid(recs) for task, recs in per_task.items()}


def passkey_grid_by_length(results: dict[str, Any], metric: str = "accuracy") -> Grid:
    """method -> length -> per-seed passkey `metric` ("accuracy": the whole key right;
    "digit_accuracy": the fraction of its tokens right), each the mean over depths."""
    per_seed: dict[tuple[str, int, int], list[float]] = {}
    for run in results.get("passkey_runs", []):
        for r in run["records"]:
            cell = per_seed.setdefault((run["method"], r["length"], run["seed"]), [])
            if r.get(metric) is not None:
                cell.append(r[metric])
    return _grid([(m, n, sum(v) / len(v) if v else None) for (m, n, _seed), v in per_seed.items()])


def passkey_grid_by_depth(results: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """(the longest length, method -> depth (as % of the filler) -> accuracies at it)."""
    lengths = [r["length"] for run in results.get("passkey_runs", []) for r in run["records"]]
    if not lengths:
        return None, {}
    longest = max(lengths)
    return longest, _grid(
        [
            (run["method"], round(100 * r["depth"]), r.get("accuracy"))
            for run in results.get("passkey_runs", [])
            for r in run["records"]
            if r["length"] == longest
        ]
    )


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, half = mean_ci95(values)
    return f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}"


def grid_table(grid: Grid, corner: str, prefix: str) -> tuple[list[str], list[list[str]]]:
    cols = sorted({c for cells in grid.values() for c in cells})
    header = [corner, *[f"{prefix}{c}" for c in cols]]
    rows = [[row, *[_cell(cells.get(c, [])) for c in cols]] for row, cells in grid.items()]
    from extrapos.report.tables import mark_best

    return header, mark_best(rows, range(1, len(header)), lower=False)


def probe_errors(results: dict[str, Any]) -> list[str]:
    """One line per distinct reason a task or passkey cell has no accuracy."""
    seen: dict[str, None] = {}
    for run in results.get("passkey_runs", []):
        if run.get("error"):
            seen[f"`{run['method']}` passkey: {run['error']}"] = None
        for r in run["records"]:
            if r.get("error"):
                seen[f"`{run['method']}` passkey at L={r['length']}: {r['error']}"] = None
    for run in results.get("task_runs", []):
        for r in run["records"]:
            if r.get("error"):
                seen[f"`{run['method']}` {run['task']} at size {r['length']}: {r['error']}"] = None
    return list(seen)


def plot_heatmaps(
    panels: list[tuple[str, Grid, str]], suptitle: str, train_marks: list[int | None]
) -> bytes:
    """PNG: one heatmap per (title, grid, column label) panel, rows = methods, colour = mean
    accuracy in [0, 1], each cell annotated; a dotted line right of the train-size column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n_rows = max(len(grid) for _, grid, _ in panels)
    n_cols = [len({c for cells in grid.values() for c in cells}) for _, grid, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(2.0 + sum(0.55 * n + 0.6 for n in n_cols), 1.4 + 0.26 * n_rows),
        dpi=110,
        squeeze=False,
        sharey=True,
        width_ratios=[n + 1 for n in n_cols],
        layout="constrained",
    )
    image = None
    for ax, (title, grid, xlabel), mark in zip(axes[0], panels, train_marks, strict=True):
        rows = list(grid)
        cols = sorted({c for cells in grid.values() for c in cells})
        values = np.full((len(rows), len(cols)), np.nan)
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                cell = grid[row].get(col) or []
                if cell:
                    values[i, j] = sum(cell) / len(cell)
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = values[i, j]
                text = "n/a" if np.isnan(v) else f"{v:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6,
                        color="white" if np.isnan(v) or v < 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.tick_params(axis="y", labelleft=ax is axes[0][0])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        if mark is not None and mark in cols:
            ax.axvline(cols.index(mark) + 0.5, color="white", linestyle=":", linewidth=1.2)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.9, label="accuracy", pad=0.02)
    fig.suptitle(suptitle, fontsize=10)
    return figure_png(fig, tight=False)


def plot_tasks(results: dict[str, Any]) -> bytes | None:
    grids = task_grids(results)
    if not grids:
        return None
    train = (results.get("task_settings") or {}).get("task_train_len")
    panels = [(task, grid, "problem size") for task, grid in grids.items()]
    return plot_heatmaps(
        panels,
        f"Task exact-match accuracy (trained on sizes 1..{train}; dotted: train size)",
        [train] * len(panels),
    )


def plot_passkey(results: dict[str, Any]) -> bytes | None:
    by_length = passkey_grid_by_length(results)
    if not by_length:
        return None
    longest, by_depth = passkey_grid_by_depth(results)
    train = results.get("train_len")
    digits = passkey_grid_by_length(results, "digit_accuracy")
    return plot_heatmaps(
        [
            ("whole key", by_length, "context length (tokens)"),
            ("key tokens right", digits, "context length (tokens)"),
            (f"whole key at L={longest}", by_depth, "depth (% of filler)"),
        ],
        f"Passkey accuracy, mean over depths and seeds (fine-tuned at {train} tokens; dotted: "
        "train length; a key token is right by chance ~1 in 10)",
        [train, train, None],
    )


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _records_csv(
    runs: list[dict[str, Any]], run_keys: tuple[str, ...], record_keys: tuple[str, ...]
) -> str | None:
    """One CSV row per record of every run: the run's `run_keys`, then the record's."""
    if not runs:
        return None
    rows = [
        [run.get(k) for k in run_keys] + [r.get(k) for k in record_keys]
        for run in runs
        for r in run["records"]
    ]
    return _csv([*run_keys, *record_keys], rows)


def tasks_csv(results: dict[str, Any]) -> str | None:
    return _records_csv(
        results.get("task_runs", []),
        ("method", "task", "seed"),
        ("length", "accuracy", "token_accuracy", "chance_accuracy"),
    )


def passkey_csv(results: dict[str, Any]) -> str | None:
    return _records_csv(
        results.get("passkey_runs", []),
        ("method", "seed"),
        ("length", "depth", "accuracy", "digit_accuracy", "n_trials"),
    )


def costs_csv(results: dict[str, Any]) -> str | None:
    costs = results.get("costs", [])
    if not costs:
        return None
    header = ["method", "length", "forward_seconds", "peak_mib", "attention", "threads", "error"]
    return _csv(header, [[c.get(k) for k in header] for c in costs])


def cost_columns(results: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """method -> (forward seconds, peak MiB[, attention path]) at the longest length,
    formatted; the path column only when the results recorded one (older runs did not)."""
    costs = results.get("costs", [])
    with_path = any("attention" in c for c in costs)
    out = {}
    for c in costs:
        if c.get("error"):
            out[c["method"]] = ("error",) * (3 if with_path else 2)
            continue
        peak = c.get("peak_mib")
        cells = (f"{c['forward_seconds']:.3f}", "n/a" if peak is None else f"{peak:.1f}")
        out[c["method"]] = (*cells, c.get("attention") or "—") if with_path else cells
    return out
