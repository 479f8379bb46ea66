"""The report at a glance: family panels with distinct styles, bold best values, sortable
HTML with code spans, training-loss curves, provenance, and no torch in the report layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from extrapos.report.lm import (
    mark_best,
    ppl_table,
    provenance_lines,
    render_markdown,
    render_page,
    write_report,
)
from extrapos.report.page import inline
from extrapos.report.style import panel_of, panels, styles

STANDARD = Path(__file__).parents[2] / "docs" / "bench-standard" / "results.json"


def _results() -> dict:
    return json.loads(STANDARD.read_text())


def _few(results: dict, methods=("alibi", "rope", "rope+yarn", "sinusoidal", "cope")) -> dict:
    """The standard results cut to a few methods (a quick report to render)."""
    for stage in ("runs", "task_runs", "passkey_runs", "costs"):
        results[stage] = [r for r in results.get(stage, []) if r["method"] in methods]
    return results


def test_every_method_of_the_standard_run_lands_in_a_family_panel_with_its_own_style():
    results = _results()
    methods = sorted({r["method"] for r in results["runs"]})
    assert len(methods) == 29
    grouped = panels([{"method": m} for m in methods])
    assert "other" not in grouped
    assert list(grouped) == [
        "absolute", "rotary and extensions", "fixed and learned biases", "contextual",
    ]  # fmt: skip
    assert panel_of({"method": "rope+yarn", "extends": "rope"}) == "rotary and extensions"
    look = styles([{"method": m} for m in methods])
    for members in grouped.values():
        pairs = [(look[e["method"]]["color"], look[e["method"]]["linestyle"]) for e in members]
        assert len(set(pairs)) == len(pairs)  # colour and line style differ within a panel


def test_best_value_per_column_is_bold_and_ties_of_a_whole_column_are_not():
    rows = [["a", "2.0 ± 0.1", "0.50"], ["b", "1.5", "0.50"], ["c", "n/a", "0.50"]]
    marked = mark_best(rows, range(1, 3), lower=True)
    assert marked[1][1] == "**1.5**" and marked[0][1] == "2.0 ± 0.1"
    assert [r[2] for r in marked] == ["0.50"] * 3
    header, table = ppl_table(_results(), "nonoverlap")
    col = header.index("L=2048")
    bold = [r[0] for r in table if r[col].startswith("**")]
    assert bold == ["kerple_power"]


def test_html_renders_code_spans_bold_and_sortable_tables():
    assert inline("`rope+<name>` is **best**") == "<code>rope+&lt;name&gt;</code> is <b>best</b>"
    page = render_page(_results(), {})
    assert "`" not in page.split("<script>")[0]  # no literal Markdown backticks
    assert 'class="sortable"' in page and "addEventListener('click'" in page
    results = _results()
    assert results["corpus_hash"][:16] in page and "<code>standard</code>" in page
    assert "extrapos bench --preset standard" in page  # the command, from argv


def test_provenance_is_shown_in_both_reports(tmp_path):
    results = _results()
    results["environment"].update(
        extrapos="0.1.0", git_commit="0123456789abcdef", git_dirty=False,
        torch_version="2.13.0+cpu", machine="AMD EPYC, 2 logical cores",
        command="extrapos bench --preset standard",
    )  # fmt: skip
    lines = provenance_lines(results)
    assert "git commit: `0123456789ab`" in lines and "machine: AMD EPYC, 2 logical cores" in lines
    md = render_markdown(results, {})
    page = render_page(results, {})
    for text in ("0123456789ab", "AMD EPYC", "2.13.0+cpu"):
        assert text in md and text in page


def test_training_loss_plot_from_loss_curves(tmp_path):
    results = _few(_results())
    for run in results["runs"]:
        if not run.get("extends"):
            run["loss_curve"] = [[10, 3.0], [20, 2.5], [30, 2.2]]
    write_report(results, tmp_path)
    assert (tmp_path / "train_loss.png").stat().st_size > 10_000
    assert "train_loss.png" in (tmp_path / "report.md").read_text()
    for name in ("ppl_vs_length.png", "ppl_vs_length_sliding.png", "loss_vs_position.png"):
        assert (tmp_path / name).is_file()


def test_the_report_layer_imports_no_torch(tmp_path):
    code = (
        "import sys, json\n"
        "from extrapos.report.lm import write_report\n"
        f"results = json.load(open({str(STANDARD)!r}))\n"
        "results['runs'] = [r for r in results['runs'] if r['method'] in ('alibi', 'rope')]\n"
        "for stage in ('task_runs', 'passkey_runs', 'costs'): results[stage] = []\n"
        f"write_report(results, {str(tmp_path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    src = str(Path(__file__).parents[2] / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.html").is_file()
