"""`extrapos tasks`, `passkey` and `diagnose`: probes beyond perplexity."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from extrapos.cli.args import (
    add_command,
    float_list,
    json_object,
    length_list,
    name_list,
    run_corpus,
    table,
    write_results,
)
from extrapos.core.errors import UserError


def cmd_tasks(args: argparse.Namespace) -> None:
    from extrapos.data.tasks import get_task, list_tasks
    from extrapos.models.gpt import GPTConfig
    from extrapos.probes.tasks import evaluate_task, train_on_task

    if args.list:
        for name in list_tasks():
            task = get_task(name)
            params = ", ".join(f"{k}={v!r}" for k, v in task.params().items()) or "(none)"
            print(f"{name:19s} {task.description}")
            print(f"{'':19s}   params: {params}; chance/token {task.chance_token_accuracy:.3g}")
        return
    if not args.task or not args.encoding:
        raise UserError("extrapos tasks needs --task and --encoding (or --list to see the tasks)")
    task = get_task(args.task, **args.task_params)
    eval_lens = args.eval_lens or [args.train_len * f for f in (1, 2, 4, 8)]
    print(
        f"task {task!r}: train sizes 1..{args.train_len} (T <= {task.seq_len(args.train_len)}), "
        f"{args.steps} steps; eval {args.eval_samples} problems per size"
    )
    records: list[dict[str, Any]] = []
    for encoding in args.encoding:
        config = GPTConfig(
            vocab_size=task.vocab_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            d_model=args.d_model,
            encoding=encoding,
            encoding_params=args.encoding_params,
        )
        result = train_on_task(
            config,
            task,
            args.train_len,
            args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            random_positions=args.random_positions,
            progress=True,
            description=f"{encoding} on {task.name}",
        )
        tail = result.losses[-20:]
        print(
            f"{encoding}: trained in {result.train_seconds:.1f} s, answer loss (last 20 steps) "
            f"{sum(tail) / len(tail):.4f}"
        )
        for r in evaluate_task(
            result.model,
            task,
            eval_lens,
            args.eval_samples,
            seed=args.seed + 1,
            random_positions=args.random_positions,
        ):
            records.append(
                {"encoding": encoding, **r, "train_len": args.train_len, "steps": args.steps}
            )
    by = {(r["encoding"], r["length"]): r for r in records}

    def cell(enc: str, n: Any) -> str:
        r = by[(enc, n)]
        if r["accuracy"] is None:
            return "n/a"
        return f"{r['accuracy']:.3f} ({r['token_accuracy']:.3f})"

    print(f"exact-match accuracy (token accuracy); chance/token {task.chance_token_accuracy:.3g}")
    table(args.encoding, eval_lens, cell, "encoding")
    payload = {
        "task": task.name,
        "task_params": task.params(),
        "train_len": args.train_len,
        "steps": args.steps,
        "seed": args.seed,
        "model": {"n_layer": args.n_layer, "n_head": args.n_head, "d_model": args.d_model},
        "random_positions": args.random_positions,
        "results": records,
    }
    write_results(args.out, args.csv, payload, records)


def cmd_passkey(args: argparse.Namespace) -> None:
    from extrapos.probes.passkey import INTRO, finetune_passkey, passkey_grid
    from extrapos.training.run_dir import load_run

    run = load_run(args.run_dir)
    model = run.model
    intro = "" if args.no_intro else INTRO
    if args.finetune_steps:
        info = finetune_passkey(
            model,
            run.tokenizer,
            length=args.finetune_len,
            steps=args.finetune_steps,
            lr=args.finetune_lr,
            seed=args.seed,
            intro=intro,
            progress=True,
        )
        tail = info["losses"][-10:]
        print(
            f"fine-tuned {args.finetune_steps} steps at length {args.finetune_len} in "
            f"{info['train_seconds']:.1f} s, answer loss (last 10 steps) {sum(tail) / len(tail):.4f}"
        )
    records = passkey_grid(
        model,
        run.tokenizer,
        lengths=args.lengths,
        depths=args.depths,
        n_trials=args.trials,
        seed=args.seed + 1,
        intro=intro,
        progress=True,
    )
    errors = [f"length {r['length']}: {r['error']}" for r in records if r.get("error")]
    if errors:  # a length the model cannot represent or a prompt cannot fit: nothing written
        raise UserError(errors[0])
    by = {(r["length"], r["depth"]): r for r in records}

    def cell(depth: str, n: Any) -> str:
        r = by[(n, float(depth))]
        return "n/a" if r["accuracy"] is None else f"{r['accuracy']:.2f}"

    print(f"passkey accuracy ({args.trials} trials per cell; rows: depth of the key)")
    table([str(d) for d in args.depths], args.lengths, cell, "depth")
    payload = {
        "run_dir": str(args.run_dir),
        "finetune_steps": args.finetune_steps,
        "finetune_len": args.finetune_len if args.finetune_steps else None,
        "results": records,
    }
    write_results(args.out, args.csv, payload, records)


def cmd_diagnose(args: argparse.Namespace) -> None:
    from extrapos.probes.diagnostics import attention_stats, plot_attention_stats
    from extrapos.training.run_dir import load_run

    run = load_run(args.run_dir)
    model = run.model
    tokens = run_corpus(Path(args.run_dir), args.data).tokens(args.split, run.tokenizer)
    records = attention_stats(model, tokens, args.lengths, n_windows=args.windows)
    by = {(f"layer {r['layer']} head {r['head']}", r["length"]): r for r in records}
    rows = list(dict.fromkeys(f"layer {r['layer']} head {r['head']}" for r in records))

    def cell(row: str, n: Any) -> str:
        r = by[(row, n)]
        return f"{r['entropy']:.2f}/{r['uniform_entropy']:.2f} d={r['mean_distance']:.0f}"

    print("attention entropy / entropy of uniform attention (nats); d = mean distance (tokens)")
    table(rows, args.lengths, cell, "")
    if args.plot:
        plot_attention_stats(records, args.plot, title=f"attention: {args.run_dir}")
        print(f"wrote {args.plot}")
    payload = {"run_dir": str(args.run_dir), "split": args.split, "results": records}
    write_results(args.out, args.csv, payload, records)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "tasks", cmd_tasks, "train on a synthetic task at short sizes, accuracy by size"
    )
    p.add_argument("--list", action="store_true", help="list the tasks and their parameters")
    p.add_argument("--task", default=None, help="task name (see --list)")
    p.add_argument("--task-params", type=json_object, default={}, metavar="JSON")
    p.add_argument("--encoding", type=name_list, default=None, help="encoding(s), comma-separated")
    p.add_argument("--encoding-params", type=json_object, default={}, metavar="JSON")
    p.add_argument("--train-len", type=int, default=16, help="train on sizes 1..N (default 16)")
    p.add_argument(
        "--eval-lens", type=length_list, default=None, help="default 1,2,4,8 x train-len"
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=256, help="problems per size")
    p.add_argument(
        "--random-positions",
        type=int,
        default=None,
        metavar="M",
        help="randomized positions (Ruoss et al. 2023): sorted random subsets of [0, M)",
    )
    p.add_argument("--out", default=None, help="write results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per (encoding, size)")

    p = add_command(
        sub, "passkey", cmd_passkey, "passkey retrieval of a trained run by length and depth"
    )
    p.add_argument("run_dir")
    p.add_argument("--lengths", type=length_list, required=True, help="e.g. 256,512,1024")
    p.add_argument("--depths", type=float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--trials", type=int, default=10, help="random keys per (length, depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-intro", action="store_true", help="drop the intro sentence (short tests)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune on passkeys first")
    p.add_argument("--finetune-len", type=int, default=256)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="write results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per (length, depth)")

    p = add_command(
        sub, "diagnose", cmd_diagnose, "attention entropy and distance per layer/head vs length"
    )
    p.add_argument("run_dir")
    p.add_argument("--lengths", type=length_list, required=True, help="e.g. 128,512,2048")
    p.add_argument("--windows", type=int, default=2, help="windows averaged per length")
    p.add_argument("--data", default=None, help="default: the corpus the run trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--plot", default=None, help="write the plot to FILE.png")
    p.add_argument("--out", default=None, help="write results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per (layer, head, length)")
