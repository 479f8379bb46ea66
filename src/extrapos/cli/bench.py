"""`extrapos bench` and `extrapos report`: the main job and re-rendering its report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from extrapos.cli.args import add_command, add_dataclass_flags, dataclass_flags
from extrapos.core.errors import UserError
from extrapos.core.settings import field_default


def cmd_bench(args: argparse.Namespace) -> None:
    from extrapos.core.files import removed_if_left_empty

    with removed_if_left_empty(args.out):
        _bench(args)


def _bench(args: argparse.Namespace) -> None:
    from extrapos.cli.dialogue import refuse_dialogue_flags

    if args.suite != "dialogue":
        refuse_dialogue_flags(args)
    if args.suite != "lm" and (args.jobs != "auto" or args.threads_per_job is not None):
        raise UserError(f"--jobs/--threads-per-job apply to --suite lm, not --suite {args.suite}")
    if args.suite == "translation":
        from extrapos.cli.translate import cmd_bench_translation

        return cmd_bench_translation(args)
    from extrapos.bench.run import BenchConfig, run_bench
    from extrapos.report.lm import summary_table, write_report

    if args.suite == "dialogue":
        from extrapos.cli.dialogue import bench_dialogue

        bench_dialogue(args)
        return
    from extrapos.bench.loggers import Loggers
    from extrapos.bench.workers import parse_jobs

    config = BenchConfig.from_sources(args.preset, args.config, **dataclass_flags(args, "bench"))
    loggers = Loggers(args.tensorboard, args.wandb, args.out, config.settings())
    results = run_bench(
        config,
        args.out,
        loggers=loggers,
        jobs=parse_jobs(args.jobs),
        threads_per_job=args.threads_per_job,
    )
    write_report(results, args.out)
    print(summary_table(results), file=sys.stderr)
    print(f"wrote {Path(args.out) / 'results.json'}, report.md, report.html, results.csv, plots")


def _preset_defaults(name: str) -> str:
    """The true default of a bench field: the quick preset's value, and where the other
    presets differ, theirs."""
    from extrapos.bench.config import PRESETS, BenchConfig

    base = {f.name: field_default(f) for f in fields(BenchConfig)}
    values = {preset: settings.get(name, base[name]) for preset, settings in PRESETS.items()}

    def show(value: object) -> str:
        if value is None:
            return "None"
        if isinstance(value, list):
            return ",".join(map(str, value)) or "none"
        return str(value)

    text = f"default {show(values['quick'])}"
    others = [f"{p} {show(v)}" for p, v in values.items() if p != "quick" and v != values["quick"]]
    return text + (f"; presets: {', '.join(others)}" if others else "")


def cmd_report(args: argparse.Namespace) -> None:
    from extrapos.report.lm import rerender  # refuses a hand-edited file naming the bad field

    target = rerender(args.dirs, args.out)
    print(f"wrote {target / 'report.md'}, report.html, results.csv and plots")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "bench", cmd_bench, "train every method short, evaluate long, write a report"
    )
    from extrapos.bench.config import PRESETS, BenchConfig

    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=None,
        help="quick (default, minutes on 2 cores), standard (every encoding, 3 seeds), "
        "literature (the six classics, BPE, bigger models), paper (GPU)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a JSON or YAML file of bench settings (any field below, plus preset); "
        "precedence: preset < file < flags",
    )
    p.add_argument(
        "--suite",
        choices=("lm", "translation", "dialogue"),
        default="lm",
        help="lm (default): language modelling, tasks, passkey; translation: train short "
        "pairs, translate long ones (--data DIR --src L1 --tgt L2); dialogue: history use, recall "
        "and long generation on a DailyDialog folder (--data), with its own defaults (sinusoidal,"
        "learned,nope,rope,alibi,t5,kerple_log,fire; seeds 0,1,2; train-len 64; 300 steps)",
    )

    names = [f.name for f in fields(BenchConfig) if f.name != "preset"]
    add_dataclass_flags(p, BenchConfig, "bench", names, defaults=_preset_defaults)
    p.add_argument("--out", default="bench_out", help="output directory (default bench_out)")
    from extrapos.cli.translate import add_bench_arguments

    add_bench_arguments(p)
    from extrapos.cli.dialogue import add_bench_arguments as add_dialogue_bench_arguments

    add_dialogue_bench_arguments(p)
    p.add_argument(
        "--jobs",
        default="auto",
        metavar="N",
        help="run the units (training, tasks, passkey) in N worker processes, the cores shared "
        "among them; cost probes still run alone (default auto: 2 on a CPU-only machine with "
        ">= 2 threads, else 1)",
    )
    p.add_argument(
        "--threads-per-job",
        type=int,
        default=None,
        metavar="T",
        help="intra-op threads of each worker (default: this process's threads / N)",
    )
    p.add_argument(
        "--tensorboard", metavar="DIR", default=None, help="also log each run to TensorBoard in DIR"
    )
    p.add_argument(
        "--wandb",
        metavar="PROJECT",
        default=None,
        help="also log each run to Weights & Biases PROJECT (offline unless WANDB_MODE says else)",
    )

    p = add_command(
        sub, "report", cmd_report, "re-render (or merge) reports from bench results.json"
    )
    p.add_argument("dirs", nargs="+", help="bench output directories")
    p.add_argument("--out", default=None, help="write the merged report here (several dirs)")
