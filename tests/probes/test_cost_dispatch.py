"""The cost probe's child processes do not oversubscribe, and the attention path a forward took
is recorded and shown (profile table, bench cost table)."""

from __future__ import annotations

import pytest
import torch

from extrapos.probes.cost import _build, child_env, markdown, measure


def test_child_env_sets_threads_and_a_passive_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    env = child_env(2)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "2"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = child_env(2)  # the user's own settings win
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize(
    ("method", "n", "path"),
    [
        ("nope", 128, "-"),
        ("alibi", 128, "chunked"),  # within one key tile of the fused kernel: the mask is free
        ("alibi", 640, "linear"),
        ("kerple_log", 128, "chunked"),
    ],
)
def test_measure_records_the_attention_path(method: str, n: int, path: str) -> None:
    torch.set_num_threads(1)
    point = measure(_build(method, n, 1, 2, 32), n, repeats=1)
    assert point["attention"] == path


def test_profile_markdown_shows_paths_and_dispatch() -> None:
    result = {
        "records": [
            {"method": "alibi", "n": 512, "seconds": 0.1, "peak_mib": 3.0, "attention": "linear"},
            {"method": "alibi", "n": 1024, "seconds": 0.2, "peak_mib": 6.0, "attention": "linear"},
        ],
        "fits": {"alibi": {"time_exponent": 1.0, "memory_exponent": 1.0}},
        "dispatch": ["attention dispatch for torch X", "  inference, linear table: linear (why)"],
    }
    text = markdown(result)
    assert "attention @ 1024" in text.splitlines()[0]
    assert "| linear |" in text and "attention dispatch for torch X" in text


def test_cost_columns_add_the_path_only_when_recorded() -> None:
    from extrapos.report.probes import cost_columns

    old = {"costs": [{"method": "alibi", "forward_seconds": 0.5, "peak_mib": 3.0}]}
    assert cost_columns(old) == {"alibi": ("0.500", "3.0")}
    new = {"costs": [{"method": "alibi", "forward_seconds": 0.5, "peak_mib": 3.0, "attention": "linear"}]}  # fmt: skip
    assert cost_columns(new) == {"alibi": ("0.500", "3.0", "linear")}
