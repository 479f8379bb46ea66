"""Distributed data parallel: `torchrun --nproc_per_node 2 -m extrapos train` on CPU (gloo).

Two processes with gradient accumulation follow the loss curve of one process with the same
global batch. They are not bitwise equal: DDP sums the two ranks' gradients (and accumulation
sums micro-batch gradients) in another order than one backward over the whole batch, which moves
the last bits of each gradient (fp32 epsilon ~1e-7, relative). AdamW's update m/√v is scale-free,
so a relative change of ~1e-7 in a gradient changes the step by about as much; over these 12
steps the two loss curves differ by at most ~5e-7 (measured). The tolerance, 2e-5, is 40x that,
and 100x below the error a wrong split of the batch would show: the trained model's loss on half
a batch differs from the whole batch's by 5e-3..3e-2 (checked at the end).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from extrapos.cli import main
from extrapos.data import load_corpus
from extrapos.training.lm import sample_batch
from extrapos.training.run_dir import list_checkpoints, load_model, load_run, load_train_state

pytestmark = pytest.mark.e2e  # end to end: benches and CLI runs

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(600)
)
TOLERANCE = 2e-5
STEPS = 12


def _train_args(data, out, *extra: str) -> list[str]:
    return [
        "-m",
        "extrapos",
        "train",
        "--encoding",
        "alibi",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--d-model",
        "16",
        "--train-len",
        "16",
        "--batch-size",
        "8",
        "--steps",
        str(STEPS),
        "--lr",
        "5e-3",
        "--eval-every",
        "4",
        "--eval-tokens",
        "512",
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]


def _run(argv: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    data = tmp_path / "toy.txt"
    data.write_text(TEXT, encoding="utf-8")
    one, two = tmp_path / "one", tmp_path / "two"
    # the reference in this process (same code as the command: the tolerance needs no bitwise
    # equality, and this saves a process start)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_args(data, one, "--save-every", "6")[2:]) == 0
    finally:
        torch.set_num_threads(threads)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *_train_args(data, two, "--save-every", "6", "--grad-accum", "2"),
        ]
    )
    single, ddp = load_train_state(one), load_train_state(two)
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert len(ddp["losses"]) == STEPS
    assert ddp["losses"] == pytest.approx(single["losses"], abs=TOLERANCE, rel=0)
    assert [v for _, v in ddp["valid"]] == pytest.approx(
        [v for _, v in single["valid"]], abs=TOLERANCE, rel=0
    )
    a, b = load_model(one).state_dict(), load_model(two).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=TOLERANCE, msg=name)

    # rank 0 alone wrote the run: one log row per step, the usual checkpoints
    assert [int(r["step"]) for r in _log(two)] == list(range(1, STEPS + 1))
    assert [s for s, _ in list_checkpoints(two)] == [STEPS]

    # the tolerance separates: had the ranks not averaged (each logging or stepping on its own
    # half of the global batch), the loss would be off by far more
    model = load_model(one)
    tokens = load_corpus(str(data)).token_array("train", load_run(one).tokenizer)
    gaps = []
    for seed in range(4):
        x, y = sample_batch(tokens, 8, 16, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            full = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            half = F.cross_entropy(model(x[:4]).flatten(0, 1), y[:4].flatten())
        gaps.append(abs(float(full - half)))
    assert max(gaps) > 100 * TOLERANCE
