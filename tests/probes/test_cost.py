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
    argv = ["profile", "--methods", "nope,alibi", "--lengths", "64,256", "--repeats", "1",
            "--n-layer", "1", "--d-model", "32", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "profile.json").read_text())
    assert {(r["method"], r["n"]) for r in result["records"]} == {
        (m, n) for m in ("nope", "alibi") for n in (64, 256)
    }
    for fit in result["fits"].values():
        assert fit["time_exponent"] is not None and math.isfinite(fit["time_exponent"])
    assert (tmp_path / "profile.png").stat().st_size > 0
    assert "| alibi |" in (tmp_path / "profile.md").read_text()
    assert main(["profile", "--methods", "nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown encoding 'nosuch'" in capsys.readouterr().err
