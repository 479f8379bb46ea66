"""Bench configuration, RoPE extensions, resumption and the report's statistics."""

from __future__ import annotations

import json

import pytest
import torch

from extrapos.bench.run import PRESETS, BenchConfig, run_bench
from extrapos.core.errors import UserError
from extrapos.core.stats import mean_ci95
from extrapos.encodings import list_encodings
from extrapos.models.gpt import GPT, GPTConfig
from extrapos.probes.extensions import (
    EXTENSIONS,
    describe_extension,
    extension_scaling,
    rope_extended,
)
from extrapos.report.lm import merge, write_report

pytestmark = pytest.mark.e2e  # end to end: benches and CLI runs

NO_PROBES = {"tasks": [], "passkey_steps": 0, "memory": False}


def test_presets_resolve_and_flags_override():
    quick = BenchConfig.from_preset("quick")
    assert quick.methods == ["sinusoidal", "learned", "nope", "rope", "alibi", "t5"]
    assert quick.eval_lens == [128, 256, 512, 1024, 2048]
    standard = BenchConfig.from_preset("standard", steps=7)
    assert (
        standard.methods == list_encodings() and standard.seeds == [0, 1, 2] and standard.steps == 7
    )
    assert set(PRESETS) == {"quick", "standard", "literature", "paper"}
    literature = BenchConfig.from_preset("literature")
    assert literature.methods == quick.methods and literature.steps == 5000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'; known: quick, standard, literature, paper"),
        ({"methods": ["rope", "rope"]}, "lists an entry twice"),
        ({"extensions": ["yarn", "yarn"]}, "--extensions lists an entry twice"),
        ({"protocols": ["sliding", "sliding"]}, "--protocols lists an entry twice"),
        ({"protocols": ["strided"]}, "unknown protocol 'strided'"),
        ({"extensions": ["magic"]}, "unknown RoPE extension 'magic'; known: linear"),
        ({"eval_tokens": 100}, "below the longest eval length"),
        ({"seeds": []}, "at least one seed"),
    ],
)
def test_bad_bench_settings(overrides, message):
    preset = overrides.pop("preset", "quick")
    with pytest.raises(UserError, match=message):
        BenchConfig.from_preset(preset, **overrides)


def test_the_bench_reaches_the_papers_sinusoidal_recipe():
    """--embed-scale and --encoding-params reach every model the bench builds; the defaults
    leave the settings (and so earlier results) as they were."""
    paper = BenchConfig.from_preset(
        "quick", embed_scale=True, encoding_params={"sinusoidal": {"scale": 1.0}}
    )
    sinusoidal = paper.model_config("sinusoidal")
    assert sinusoidal.embed_scale is True and sinusoidal.encoding_params == {"scale": 1.0}
    learned = paper.model_config("learned")  # the bench's own parameters stay, others get none
    assert learned.embed_scale is True and set(learned.encoding_params) == {"max_len"}
    assert paper.settings()["encoding_params"] == {"sinusoidal": {"scale": 1.0}}
    default = BenchConfig.from_preset("quick")
    assert default.model_config("sinusoidal").embed_scale is False
    assert "embed_scale" not in default.settings()
    assert "encoding_params" not in default.settings()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sinusoidal": {"scale": -1.0}}, "scale must be > 0"),
        ({"sinusoidal": {"sale": 1.0}}, "has no parameter"),
        ({"alibi": {}}, "alibi, which --methods does not select"),
        ({"sinusoidal": 1.0}, "must map method names"),
    ],
)
def test_bad_bench_encoding_params_are_named(params, message):
    with pytest.raises(UserError, match=message):
        BenchConfig.from_preset("quick", methods=["sinusoidal"], encoding_params=params)


def test_extension_factor_is_eval_over_train_length():
    assert extension_scaling("linear", 128, 512)["factor"] == 4.0
    assert extension_scaling("yarn", 128, 64)["factor"] == 1.0  # never below 1
    assert extension_scaling("yarn", 128, 512)["original_max_position_embeddings"] == 128


@pytest.mark.parametrize("eval_len", [128, 200, 256, 512, 1000, 2048])
def test_self_extend_group_keeps_grouped_distances_inside_the_train_length(eval_len):
    """Every pair's distance after the encoding's own remap (brute force over all pairs) is a
    trained distance (< 128), and the next smaller group would not keep it so."""
    from extrapos.encodings import build_encoding

    params = describe_extension("self_extend", 128, eval_len)
    window, group = params["window"], params["group"]

    def farthest(g: int) -> float:
        enc = build_encoding("self_extend", head_dim=8, window=window, group=g)
        pos = torch.arange(eval_len)
        q, k = enc.far_positions(pos, pos)
        far = (pos[:, None] - pos[None, :]) >= window
        return float(((q[:, None] - k[None, :]) * far).max())

    assert farthest(group) <= 127
    if group > 1:
        assert farthest(group - 1) > 127


def test_rope_extended_swaps_and_restores_the_encoding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="rope")).eval()
    x = torch.randint(0, 256, (1, 24))
    plain = model(x)
    with rope_extended(model, "linear", 24, 24):
        torch.testing.assert_close(model(x), plain)  # factor 1: PI is the identity
    with rope_extended(model, "linear", 24, 96):
        assert not torch.allclose(model(x), plain)
    torch.testing.assert_close(model(x), plain)  # restored
    alibi = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="alibi"))
    with pytest.raises(UserError, match="need a model trained with encoding 'rope'"):
        with rope_extended(alibi, "yarn", 24, 96):
            pass


@pytest.mark.parametrize("kind", EXTENSIONS)
def test_every_extension_runs_past_the_train_length(kind):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, d_model=16, encoding="rope")).eval()
    with rope_extended(model, kind, 16, 64):
        assert torch.isfinite(model(torch.randint(0, 256, (1, 64)))).all()


def test_mean_ci95_against_the_t_table():
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / 3**0.5)  # t(0.975, 2) · s / √n, s = 1
    assert mean_ci95([5.0]) == (5.0, None)


def test_killed_bench_reruns_only_missing_runs(tmp_path):
    """Drop the last finished run from results.json (as a kill before its write would), rerun:
    the earlier run is kept verbatim, the missing one is trained again."""
    cfg = BenchConfig.from_preset(
        "quick", methods=["alibi", "nope"], steps=2, train_len=8, eval_lens=[8, 16], eval_tokens=64,
        protocols=["nonoverlap"], extensions=[], **NO_PROBES,
    )  # fmt: skip
    first = run_bench(cfg, tmp_path, progress=False, save_runs=False)
    data = json.loads((tmp_path / "results.json").read_text())
    data["runs"] = data["runs"][:1]
    (tmp_path / "results.json").write_text(json.dumps(data))
    second = run_bench(cfg, tmp_path, progress=False, save_runs=False)
    assert second["runs"][0] == first["runs"][0]
    assert [r["method"] for r in second["runs"]] == ["alibi", "nope"]
    other = BenchConfig.from_preset(
        "quick", methods=["alibi"], steps=3, train_len=8, eval_lens=[8, 16], eval_tokens=64,
        protocols=["nonoverlap"], extensions=[], **NO_PROBES,
    )  # fmt: skip
    third = run_bench(other, tmp_path, progress=False, save_runs=False)  # other settings: rerun
    assert third["settings"]["steps"] == 3
    assert third["runs"][0]["final_train_loss"] != first["runs"][0]["final_train_loss"]


def test_merge_refuses_different_settings(tmp_path):
    for name, steps in (("a", 2), ("b", 3)):
        cfg = BenchConfig.from_preset(
            "quick", methods=["nope"], steps=steps, train_len=8, eval_lens=[8], eval_tokens=64,
            protocols=["nonoverlap"], extensions=[], **NO_PROBES,
        )  # fmt: skip
        run_bench(cfg, tmp_path / name, progress=False, save_runs=False)
    with pytest.raises(UserError, match="cannot merge"):
        merge([tmp_path / "a", tmp_path / "b"])


def _probe_config(**overrides):
    settings = {
        "methods": ["rope", "alibi"], "steps": 2, "train_len": 128, "eval_lens": [128, 256],
        "eval_tokens": 256, "protocols": ["nonoverlap"], "extensions": ["linear"],
        "tasks": ["parity"], "task_train_len": 4, "task_steps": 2, "task_samples": 4,
        "passkey_steps": 2, "passkey_depths": [0.0, 1.0], "passkey_trials": 2, "memory": False,
    }  # fmt: skip
    return BenchConfig.from_preset("quick", **{**settings, **overrides})


def test_bench_runs_tasks_and_passkey_and_reports_them(tmp_path):
    results = run_bench(_probe_config(), tmp_path, progress=False, save_runs=False)
    tasks = {(r["method"], r["task"], r["seed"]): r for r in results["task_runs"]}
    assert set(tasks) == {("rope", "parity", 0), ("alibi", "parity", 0)}
    for run in tasks.values():
        assert [r["length"] for r in run["records"]] == [4, 8, 16, 32]  # 1, 2, 4, 8 × train size
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in run["records"])
    # the rope fine-tune is also scored with each extension; each row has every (length, depth)
    assert [r["method"] for r in results["passkey_runs"]] == ["rope", "rope+linear", "alibi"]
    for run in results["passkey_runs"]:
        cells = {(r["length"], r["depth"]) for r in run["records"]}
        assert cells == {(n, d) for n in (128, 256) for d in (0.0, 1.0)}
        assert all(r["n_trials"] == 2 and 0 <= r["accuracy"] <= 1 for r in run["records"])
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## Synthetic tasks" in report and "## Passkey retrieval" in report
    assert (tmp_path / "task_accuracy.png").stat().st_size > 0
    assert (tmp_path / "passkey_accuracy.png").stat().st_size > 0
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5  # ppl, train loss, positions, tasks, passkey
    rows = (tmp_path / "tasks.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 4  # header + method × size
    rows = (tmp_path / "passkey.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2 * 2  # header + row × length × depth


def test_changing_probe_settings_keeps_the_language_model_runs(tmp_path, monkeypatch):
    first = run_bench(_probe_config(), tmp_path, progress=False, save_runs=True)
    import extrapos.bench.run as bench

    def no_training(*args, **kwargs):
        raise AssertionError("a kept language-model run was trained again")

    monkeypatch.setattr(bench, "run_method", no_training)
    second = run_bench(_probe_config(passkey_trials=3), tmp_path, progress=False)
    assert second["runs"] == first["runs"] and second["task_runs"] == first["task_runs"]
    # the passkey stage reran from the saved checkpoints, with 3 keys per cell now
    assert all(r["n_trials"] == 3 for run in second["passkey_runs"] for r in run["records"])


def test_a_train_length_too_short_for_a_passkey_prompt_is_reported_not_raised(tmp_path):
    config = _probe_config(train_len=32, eval_lens=[32, 64], eval_tokens=64, tasks=[])
    results = run_bench(config, tmp_path, progress=False, save_runs=False)
    assert all("shorter than the prompt" in run["error"] for run in results["passkey_runs"])
    write_report(results, tmp_path)
    assert "shorter than the prompt" in (tmp_path / "report.md").read_text()


def test_bench_measures_forward_cost_in_a_fresh_process(tmp_path):
    config = _probe_config(methods=["nope"], tasks=[], passkey_steps=0, memory=True)
    results = run_bench(config, tmp_path, progress=False, save_runs=False)
    (cost,) = results["costs"]
    assert cost["method"] == "nope" and cost["length"] == 256
    assert cost["forward_seconds"] > 0 and cost["peak_mib"] > 0
    write_report(results, tmp_path)
    assert "peak MiB @ 256" in (tmp_path / "report.md").read_text()


def test_sigkilled_bench_rerun_keeps_every_finished_run(tmp_path):
    """A real `extrapos bench` SIGKILLed after its first finished run: results.json is whole,
    and the rerun keeps what it holds verbatim and runs the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    argv = [sys.executable, "-m", "extrapos", "bench", "--methods", "alibi,nope,rope,t5",
            "--steps", "40", "--train-len", "16", "--eval-lens", "16,32", "--eval-tokens", "64",
            "--extensions", "none", "--tasks", "none", "--passkey-steps", "0", "--no-memory",
            "--out", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "results.json"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if results.exists() and json.loads(results.read_text())["runs"]:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the bench finished before it could be killed"
    finished = json.loads(results.read_text())["runs"]  # parses: never half written
    assert 1 <= len(finished) < 4
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert rerun.stderr.count("kept from") == len(finished)
    after = json.loads(results.read_text())["runs"]
    assert [r["method"] for r in after] == ["alibi", "nope", "rope", "t5"]
    assert after[: len(finished)] == finished


TIMINGS = {"train_seconds", "eval_seconds", "tokens_per_second", "finetune_seconds"}


def _numbers(results: dict) -> dict:
    """Every recorded result but wall-clock times and the environment (date, argv)."""
    strip = lambda run: {k: v for k, v in run.items() if k not in TIMINGS}  # noqa: E731
    return {
        stage: [strip(r) for r in results[stage]] for stage in ("runs", "task_runs", "passkey_runs")
    }


def test_the_same_seed_gives_the_same_results(tmp_path):
    """Two benches with the same settings, in different folders, record identical numbers
    (losses, perplexities, per-position losses, task and passkey accuracies)."""
    config = _probe_config(steps=3, task_steps=3, passkey_steps=2)
    a = run_bench(config, tmp_path / "a", progress=False, save_runs=False)
    b = run_bench(config, tmp_path / "b", progress=False, save_runs=False)
    assert _numbers(a) == _numbers(b)
    other = run_bench(_probe_config(steps=3, task_steps=3, passkey_steps=2, seeds=[1]),
                      tmp_path / "c", progress=False, save_runs=False)  # fmt: skip
    assert _numbers(other)["runs"] != _numbers(a)["runs"]  # the seed matters


def test_a_rerun_with_fewer_methods_keeps_the_other_finished_records(tmp_path):
    cfg = BenchConfig.from_preset(
        "quick", methods=["alibi", "nope"], steps=2, train_len=8, eval_lens=[8, 16], eval_tokens=64,
        protocols=["nonoverlap"], extensions=[], **NO_PROBES,
    )  # fmt: skip
    first = run_bench(cfg, tmp_path, progress=False, save_runs=False)
    fewer = BenchConfig.from_preset(
        "quick", methods=["nope"], steps=2, train_len=8, eval_lens=[8, 16], eval_tokens=64,
        protocols=["nonoverlap"], extensions=[], **NO_PROBES,
    )  # fmt: skip
    second = run_bench(fewer, tmp_path, progress=False, save_runs=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    by_method = {r["method"]: r for r in saved["runs"]}
    assert sorted(by_method) == ["alibi", "nope"]
    assert by_method == {r["method"]: r for r in first["runs"]}
    assert second["runs"] == saved["runs"]


def test_jobs_in_worker_processes_give_the_one_job_numbers(tmp_path):
    """`--jobs 2` runs language-model runs, the extension row, task models and passkey
    fine-tunes in two single-thread workers; records, their order and every number equal a
    one-job bench on one thread (the same float sums, so bitwise)."""
    config = _probe_config(
        steps=3, task_steps=3, passkey_steps=2, methods=["rope", "alibi", "nope"]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_bench(config, tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)
    two = run_bench(config, tmp_path / "two", progress=False, jobs=2, threads_per_job=1)
    assert _numbers(two) == _numbers(one)
    assert [r["method"] for r in two["runs"]] == ["rope", "rope+linear", "alibi", "nope"]
    assert two["environment"]["jobs"] == 2 and two["environment"]["threads_per_job"] == 1
    assert (tmp_path / "two" / "runs" / "nope-seed0" / "config.json").is_file()


def test_bad_jobs_are_refused(tmp_path):
    with pytest.raises(UserError, match="--jobs must be >= 1"):
        run_bench(_probe_config(), tmp_path / "a", progress=False, jobs=0)
    with pytest.raises(UserError, match="needs the runs saved"):
        run_bench(_probe_config(), tmp_path / "b", progress=False, save_runs=False, jobs=2)
