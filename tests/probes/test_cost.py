"""`extrapos profile`: measured time/memory vs n and the fitted log-log exponents."""

from __future__ import annotations

import json
import math

import pytest

from extrapos.cli import main
from extrapos.probes.cost import loglog_slope


def test_loglog_slope_recovers_the_exponent() -> None:
    ns = [256, 512, 1024, 2048]
    assert loglog_slope(ns, [3 * n**2 for n in ns]) == pytest.approx(2.0)
    assert loglog_slope(ns, [0.5 * n for n in ns]) == pytest.approx(1.0)
    assert loglog_slope([8], [1.0]) is None


def test_profile_command_writes_table_json_and_plot(tmp_path, capsys) -> None:
    argv = ["profile", "--methods", "nope,t5", "--lengths", "64,256", "--train-lengths",
            "32,128", "--repeats", "1", "--n-layer", "1", "--d-model", "32",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    assert {(r["method"], r["mode"], r["n"]) for r in result["records"]} == {
        (m, "eval", n) for m in ("nope", "t5") for n in (64, 256)
    } | {(m, "train", n) for m in ("nope", "t5") for n in (32, 128)}
    for fits in (result["fits"], result["train_fits"]):
        assert set(fits) == {"nope", "t5"}
        for fit in fits.values():
            assert fit["time_exponent"] is not None and math.isfinite(fit["time_exponent"])
    # a training step of the learned T5 table takes its own backward path
    trained = [r for r in result["records"] if r["mode"] == "train" and r["method"] == "t5"]
    assert {r["attention"] for r in trained} == {"chunked-table-grad"}
    assert (tmp_path / "profile.png").stat().st_size > 0
    text = (tmp_path / "profile.md").read_text()
    assert "| t5 |" in text and "Training step (forward + backward)" in text
    assert main(["profile", "--methods", "nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown encoding 'nosuch'" in capsys.readouterr().err
