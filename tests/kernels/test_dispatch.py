"""The measured dispatch: calibration is run once, cached per machine key in the cache file,
reused by a fresh process, and the decision and its reason are printable."""

from __future__ import annotations

import json

import pytest
import torch

import extrapos.kernels.attention  # noqa: F401  (registers the paths calibration times)
from extrapos.kernels import dispatch


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path):  # noqa: ANN001, ANN201
    monkeypatch.setenv("EXTRAPOS_CACHE", str(tmp_path))
    monkeypatch.setattr(dispatch, "_calibration", None)
    return tmp_path


def test_calibration_is_measured_once_and_cached(fresh, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_timing(n: int, repeats: int) -> dict[str, float]:
        calls.append(n)
        return {"chunked": 1.0, "flex": 0.5, "chunked_alibi": 0.9, "linear": 0.8}

    monkeypatch.setattr(dispatch, "_time_paths", fake_timing)
    monkeypatch.setattr("extrapos.kernels.dispatch.flex_available", lambda device: True)
    first = dispatch.calibration()
    assert first is not None and first["flex_from"] == dispatch.FLEX_CANDIDATE_LEN
    assert dispatch.calibration() is first and calls == [dispatch.CALIBRATION_LEN]
    stored = json.loads((fresh / dispatch.CACHE_FILE).read_text())
    assert stored[dispatch.machine_key()]["seconds"]["flex"] == 0.5
    # a new process (no in-memory record) reads the file instead of measuring again
    monkeypatch.setattr(dispatch, "_calibration", None)
    assert dispatch.calibration()["seconds"]["flex"] == 0.5 and len(calls) == 1
    d = dispatch.decide(
        needs_grad=False, s=8192, t=8192, device=torch.device("cpu"),
        linear=False, linear_ok=False, flex_ok=True,
    )  # fmt: skip
    assert d.path == "flex" and "chunked 1.000 s" in d.reason


def test_slower_flex_is_not_chosen_and_failures_count_as_slower(fresh, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(dispatch, "_time_paths", lambda n, r: {"chunked": 1.0, "flex": 1.5})
    assert dispatch.calibrate()["flex_from"] is None

    def broken(n: int, r: int) -> dict[str, float]:
        raise RuntimeError("C++ compile error")

    monkeypatch.setattr(dispatch, "_time_paths", broken)
    record = dispatch.calibrate()
    assert record["flex_from"] is None and "compile error" in record["error"]


def test_corrupt_cache_file_is_remeasured(fresh, monkeypatch) -> None:  # noqa: ANN001
    (fresh / dispatch.CACHE_FILE).write_text("{not json")
    monkeypatch.setattr(dispatch, "_time_paths", lambda n, r: {"chunked": 1.0, "flex": 2.0})
    monkeypatch.setattr("extrapos.kernels.dispatch.flex_available", lambda device: True)
    assert dispatch.calibration()["flex_from"] is None
    assert json.loads((fresh / dispatch.CACHE_FILE).read_text())  # rewritten, valid


def test_calibration_can_be_switched_off(fresh, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("EXTRAPOS_ATTENTION_CALIBRATE", "0")
    monkeypatch.setattr(dispatch, "_time_paths", lambda n, r: pytest.fail("measured"))
    assert dispatch.calibration() is None
    d = dispatch.decide(
        needs_grad=False, s=8192, t=8192, device=torch.device("cpu"),
        linear=False, linear_ok=False, flex_ok=True,
    )  # fmt: skip
    assert d.path == "chunked" and "not calibrated" in d.reason


def test_describe_names_the_machine_and_every_decision(fresh) -> None:  # noqa: ANN001
    lines = dispatch.describe()
    text = "\n".join(lines)
    assert torch.__version__ in lines[0]
    assert "not calibrated yet" in text
    assert "linear table (alibi), n=8192: linear" in text
    assert "training, learned tables: chunked" in text


def test_linear_tables_follow_the_calibration_too(fresh, monkeypatch) -> None:  # noqa: ANN001
    """ALiBi inference at >= FLEX_CANDIDATE_LEN keys: the fold unless the mask path measured
    faster here; training and short calls keep the fold."""
    timings = {"chunked": 1.0, "flex": 2.0, "chunked_alibi": 0.5, "linear": 0.6}
    monkeypatch.setattr(dispatch, "_time_paths", lambda n, r: timings)
    monkeypatch.setattr("extrapos.kernels.dispatch.flex_available", lambda device: True)
    cpu = torch.device("cpu")
    common = {"device": cpu, "linear": True, "linear_ok": True, "flex_ok": True}
    d = dispatch.decide(needs_grad=False, s=8192, t=8192, **common)
    assert d.path == "chunked" and "linear 0.600 s" in d.reason
    assert dispatch.decide(needs_grad=True, s=1024, t=1024, **common).path == "linear"
    assert dispatch.decide(needs_grad=False, s=1024, t=1024, **common).path == "linear"
    timings["linear"] = 0.4
    monkeypatch.setattr(dispatch, "_calibration", None)
    (fresh / dispatch.CACHE_FILE).unlink()
    assert dispatch.decide(needs_grad=False, s=8192, t=8192, **common).path == "linear"


def test_a_tie_at_calibration_goes_to_the_fold(fresh, monkeypatch) -> None:  # noqa: ANN001
    """The 2026-12-03 calibration here: mask path 0.152 s vs fold 0.156 s at 4k. The fold's cost
    is bias-free SDPA's at every length, the mask path's grows faster, so a tie is no reason to
    leave the fold; a cache written under the old rule ("linear_from_calibration": false) is
    decided again from its seconds."""
    seconds = {"chunked": 0.151, "flex": 0.214, "chunked_alibi": 0.152, "linear": 0.156}
    stale = {
        "linear_from_calibration": False,
        "flex_from": None,
        "key": dispatch.machine_key(),
        "n": 4096,
        "seconds": seconds,
        "measured_at": "2026-12-03 07:38:00",
    }
    (fresh / dispatch.CACHE_FILE).write_text(json.dumps({stale["key"]: stale}))
    common = {"device": torch.device("cpu"), "linear": True, "linear_ok": True, "flex_ok": True}
    d = dispatch.decide(needs_grad=False, s=8192, t=8192, **common)
    assert d.path == "linear" and "chunked 0.152 s" in d.reason
    monkeypatch.setattr(dispatch, "_time_paths", lambda n, r: seconds)
    assert dispatch.calibrate()["linear_from_calibration"] is True
