"""`extrapos lm-eval`: run lm-evaluation-harness tasks on a trained run (any encoding)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from extrapos.cli.args import add_command, name_list
from extrapos.core.errors import UserError


def _jsonable(results: dict[str, Any]) -> dict[str, Any]:
    """What lm-eval returns, minus the model object; anything else not JSON becomes a string."""
    keep = {k: v for k, v in results.items() if k != "config"}
    config = {k: v for k, v in (results.get("config") or {}).items() if k != "model"}
    return json.loads(json.dumps({**keep, "config": config}, default=str))


def cmd_lm_eval(args: argparse.Namespace) -> None:
    try:
        from extrapos.integrations.lm_eval import simple_evaluate
    except ImportError as exc:
        raise UserError(
            "extrapos lm-eval needs lm-evaluation-harness: pip install 'extrapos[lm-eval]'"
        ) from exc
    from extrapos.core.files import write_text

    if not args.tasks:
        raise UserError("--tasks needs at least one task name")
    results = simple_evaluate(
        args.run_dir,
        args.tasks,
        include_path=args.include_path,
        limit=args.limit,
        max_length=args.max_length,
        device=args.device,
    )
    payload = {"run_dir": str(args.run_dir), "max_length": args.max_length, **_jsonable(results)}
    write_text(args.out, json.dumps(payload, indent=2) + "\n")
    for task, metrics in results["results"].items():
        shown = ", ".join(
            f"{k.split(',')[0]} {v:.4f}"
            for k, v in metrics.items()
            if isinstance(v, float) and "stderr" not in k
        )
        print(f"{task}: {shown}")
    print(f"wrote {args.out}")


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "lm-eval", cmd_lm_eval, "run lm-evaluation-harness tasks on a trained run")
    p.add_argument("run_dir")
    p.add_argument("--tasks", type=name_list, required=True, help="comma-separated task names")
    p.add_argument("--include-path", default=None, help="a folder of extra task YAML files")
    p.add_argument("--limit", type=float, default=None, help="at most N documents per task")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="context length in tokens (default: the run's training length)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="write the harness's results to FILE.json")
