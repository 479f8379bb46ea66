"""`extrapos report` on a hand-edited results.json: exit 2 and one line naming the bad field
(record index and key), before anything is rendered; every results.json we ship passes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from extrapos.cli import main
from extrapos.core.results import check_results

DOCS = Path(__file__).parents[2] / "docs"
STANDARD = json.loads((DOCS / "bench-standard" / "results.json").read_text())


@pytest.mark.parametrize("name", ["bench-standard", "bench-quick", "bench-translation",
                                  "bench-dialogue"])  # fmt: skip
def test_every_shipped_results_file_passes(name):
    check_results(json.loads((DOCS / name / "results.json").read_text()))


def _set(results: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        results = results[key]
    results[path[-1]] = value


EDITS = [
    (("runs", 1, "ppl_by_protocol", "nonoverlap", "256"), "abc",
     "runs[1].ppl_by_protocol.nonoverlap.256 is 'abc', expected a number or null"),
    (("runs", 0, "ppl", "128"), [1], "runs[0].ppl.128 is [1], expected a number or null"),
    (("runs", 0, "method"), 3, "runs[0].method is 3, expected a name"),
    (("runs", 2, "seed"), "0", "runs[2].seed is '0', expected an integer"),
    (("runs", 0, "loss_curve"), [[1, 2.0], [1]],
     "runs[0].loss_curve[1] is [1], expected [step, loss]"),
    (("runs", 0, "position_nll"), [], "runs[0].position_nll is [], expected an object"),
    (("runs", 3, "train_seconds"), "fast", "runs[3].train_seconds is 'fast', expected a number"),
    (("train_len",), "128", "train_len is '128', expected a length >= 1"),
    (("eval_lens",), [], "eval_lens is [], expected a non-empty list of lengths"),
    (("eval_lens", 1), -256, "eval_lens[1] is -256, expected a length >= 1"),
    (("task_runs", 0, "records", 1, "accuracy"), "x",
     "task_runs[0].records[1].accuracy is 'x', expected a number"),
    (("task_runs", 0, "task"), None, "task_runs[0].task is None, expected a name"),
    (("passkey_runs", 0, "records", 0, "depth"), "x",
     "passkey_runs[0].records[0].depth is 'x', expected a number"),
    (("passkey_runs", 1, "finetune_loss"), "x", "passkey_runs[1].finetune_loss is 'x'"),
    (("costs",), {}, "costs is {}, expected a list of records"),
    (("settings",), [], "settings is [], expected an object"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "message"), EDITS, ids=[str(e[0]) for e in EDITS])
def test_report_names_the_bad_field_of_a_hand_edited_results_file(
    path, value, message, tmp_path, capsys
):
    results = copy.deepcopy(STANDARD)
    _set(results, path, value)
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err and str(tmp_path / "results.json") in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing rendered


def test_the_report_api_refuses_a_hand_edited_file_too(tmp_path):
    """The check lives in the report layer (`report.lm.merge`), not only in the command."""
    from extrapos.core.errors import UserError
    from extrapos.report.lm import rerender

    results = copy.deepcopy(STANDARD)
    _set(results, ("runs", 1, "ppl", "256"), "abc")
    (tmp_path / "results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match=r"runs\[1\]\.ppl\.256 is 'abc'"):
        rerender([tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
