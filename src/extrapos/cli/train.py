"""`extrapos train`: one run, configured by file, --set and flags."""

from __future__ import annotations

import argparse
from typing import Any

from extrapos.cli.args import add_command, add_dataclass_flags, dataclass_flags

#: the fields of each config section that get a flag (every other one: --set SECTION.FIELD=V)
FLAG_FIELDS = {
    "model": ("encoding", "encoding_params", "n_layer", "n_head", "d_model"),
    "train": None,  # every field
    "data": ("name", "tokenizer", "vocab_size"),
    "eval": ("every", "max_tokens"),
}


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The train flags given on the command line, as config sections (unset flags omitted)."""
    return {section: dataclass_flags(args, section) for section in FLAG_FIELDS}


def cmd_train(args: argparse.Namespace) -> None:
    import math

    from extrapos.training.config import load_config_file, merge, parse_assignments
    from extrapos.training.lm import init_distributed, run_training

    base = load_config_file(args.config) if args.config else {}
    config = merge(base, parse_assignments(args.set), _train_overrides(args))
    info = init_distributed()
    try:
        result = run_training(
            config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            where=f"config file {args.config} with the command-line flags" if args.config else None,
        )
    finally:
        if info.world_size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if info.is_main:
        valid = ""
        if result.valid:
            step, loss = result.valid[-1]
            valid = f", valid loss {loss:.4f} (ppl {math.exp(loss):.2f}) at step {step}"
        print(
            f"trained {config['model']['encoding']}: final loss {result.losses[-1]:.4f}{valid}, "
            f"{result.tokens_per_second:,.0f} tokens/s; saved to {args.out}"
        )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", cmd_train, "train one model and save it to a run directory")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="JSON or YAML config (sections model/train/data/eval; a run's config.json works); "
        "flags override it",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set train.min_lr_ratio=0 (repeatable)",
    )
    from extrapos.models.config import GPTConfig
    from extrapos.training.config import DataConfig, EvalConfig, TrainConfig

    sections = {"model": GPTConfig, "train": TrainConfig, "data": DataConfig, "eval": EvalConfig}
    for section, names in FLAG_FIELDS.items():
        add_dataclass_flags(p, sections[section], section, names)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints of an earlier run in --out and start over",
    )
