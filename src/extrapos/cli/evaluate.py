"""`extrapos eval` and `extrapos generate`: score or sample a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from extrapos.cli.args import (
    EXTENSION_NAMES,
    add_command,
    length_list,
    print_perplexities,
    run_corpus,
    write_results,
)
from extrapos.core.errors import UserError


def _objective(run_dir: str) -> str:
    """The objective a run trained with ("lm" for runs that predate the field)."""
    from extrapos.training.run_dir import load_config

    return load_config(run_dir).get("train", {}).get("objective", "lm")


def cmd_eval(args: argparse.Namespace) -> None:
    from extrapos.probes.perplexity import evaluate_lengths
    from extrapos.training.run_dir import load_run

    run = load_run(args.run_dir)
    model = run.model
    if min(args.lengths) < 1:
        raise UserError(f"--lengths must be positive, got {args.lengths}")
    if _objective(args.run_dir) == "mlm":
        return _eval_mlm(run, args)
    if args.mask_seed is not None:
        raise UserError(f"--mask-seed applies to mlm runs; {args.run_dir} is an lm run")
    if not getattr(args, "extend", None):  # a learned table too short: say so before any work
        model.encoding.check_positions(max(args.lengths) - 1)
    corpus = run_corpus(Path(args.run_dir), args.data)
    tokens = corpus.tokens(args.split, run.tokenizer)
    if getattr(args, "extend", None):
        records = _evaluate_extended(model, tokens, args, run.tokenizer.token_bytes())
    else:
        records = evaluate_lengths(
            model,
            tokens,
            args.lengths,
            protocol=args.protocol,
            stride=args.stride,
            max_tokens=args.max_tokens,
            progress=True,
            token_bytes=run.tokenizer.token_bytes(),
        )
    print_perplexities(records)
    payload = {
        "run_dir": str(args.run_dir),
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "split": args.split,
        "results": records,
    }
    write_results(args.out, getattr(args, "csv", None), payload, records)
    if getattr(args, "per_position", None):
        from extrapos.probes.diagnostics import plot_position_nll, write_position_nll
        from extrapos.training.run_dir import load_config

        train_len = load_config(args.run_dir).get("train", {}).get("train_len")
        png = Path(args.per_position)
        plot_position_nll(
            records, png, train_len=train_len, title=f"loss by position: {args.run_dir}"
        )
        curves = png.with_suffix(".positions.json")  # never the --out file
        write_position_nll(records, curves, train_len=train_len)
        print(f"wrote {png} and {curves}")


def _eval_mlm(run: Any, args: argparse.Namespace) -> None:
    """Masked-token accuracy and MLM perplexity per length (extrapos.probes.mlm)."""
    from extrapos.data.tokenizers import mask_token_id
    from extrapos.probes.mlm import evaluate_mlm_lengths
    from extrapos.training.mlm import EVAL_MASK_SEED

    model, tokenizer = run.model, run.tokenizer
    lm_only = {
        "--protocol sliding": args.protocol != "nonoverlap",
        "--stride": args.stride is not None,
        "--extend": bool(getattr(args, "extend", None)),
        "--per-position": bool(getattr(args, "per_position", None)),
    }
    given = [flag for flag, on in lm_only.items() if on]
    if given:
        raise UserError(
            f"{args.run_dir} is an mlm run, scored on non-overlapping masked windows; "
            f"{', '.join(given)} apply to lm runs only — drop them"
        )
    model.encoding.check_positions(max(args.lengths) - 1)
    corpus = run_corpus(Path(args.run_dir), args.data)
    tokens = corpus.tokens(args.split, tokenizer)
    seed = EVAL_MASK_SEED if args.mask_seed is None else args.mask_seed
    records = evaluate_mlm_lengths(
        model,
        tokens,
        args.lengths,
        mask_id=mask_token_id(tokenizer),
        seed=seed,
        max_tokens=args.max_tokens,
        progress=True,
    )
    for r in records:
        if r.get("mlm_ppl") is None:
            print(f"L={r['length']:>6}: n/a ({r['error']})")
        else:
            print(
                f"L={r['length']:>6}: masked accuracy {r['mlm_accuracy']:.4f}  MLM ppl "
                f"{r['mlm_ppl']:.4f}  ({r['masked_tokens']:,} masked tokens, {r['windows']} windows)"
            )
    payload = {
        "run_dir": str(args.run_dir),
        "objective": "mlm",
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "split": args.split,
        "mask_seed": seed,
        "results": records,
    }
    write_results(args.out, getattr(args, "csv", None), payload, records)


def _train_len(run_dir: str) -> int:
    from extrapos.training.run_dir import load_config

    train_len = load_config(run_dir).get("train", {}).get("train_len")
    if not train_len:
        raise UserError(f"{run_dir} records no train_len; --extend needs the trained length")
    return int(train_len)


def _evaluate_extended(
    model: Any, tokens: Any, args: argparse.Namespace, token_bytes: Any
) -> list[dict[str, Any]]:
    """Each length with the RoPE extension set for it (factor = length / train length), over
    one trimmed stream so every length scores the same targets."""
    from extrapos.probes.extensions import rope_extended
    from extrapos.probes.perplexity import common_prefix, evaluate_lengths

    train_len = _train_len(args.run_dir)
    tokens = tokens[: common_prefix(tokens.numel(), args.lengths, args.max_tokens)]
    records = []
    for length in args.lengths:
        with rope_extended(model, args.extend, train_len, length):
            records += evaluate_lengths(
                model,
                tokens,
                [length],
                protocol=args.protocol,
                stride=args.stride,
                progress=True,
                token_bytes=token_bytes,
            )
        records[-1]["extension"] = args.extend
    return records


def cmd_generate(args: argparse.Namespace) -> None:
    import contextlib

    import torch

    from extrapos.cli.dialogue import generate_stats, stream_generate
    from extrapos.probes.extensions import rope_extended
    from extrapos.training.run_dir import load_run

    if _objective(args.run_dir) == "mlm":
        raise UserError(
            f"{args.run_dir} was trained with --objective mlm: it is a bidirectional encoder that "
            "fills masked tokens and cannot generate text; generate from an lm run"
        )
    run = load_run(args.run_dir)
    model, tokenizer = run.model, run.tokenizer
    if args.stats:
        if args.extend:
            raise UserError("--stats does not take --extend; drop one of them")
        generate_stats(model, tokenizer, args)
        return
    if args.prompt is None:
        raise UserError("--prompt is required (or pass --stats to use held-out prompts)")
    prompt = tokenizer.encode(args.prompt)
    if prompt.numel() == 0:
        raise UserError("--prompt is empty; give at least one character")
    generator = torch.Generator().manual_seed(args.seed)
    total = prompt.numel() + args.max_new_tokens
    extension = (
        rope_extended(model, args.extend, _train_len(args.run_dir), total)
        if args.extend
        else contextlib.nullcontext()
    )
    with extension:  # the text streams to stdout; the same draws as model.generate
        stream_generate(model, tokenizer, prompt, args, generator)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval",
        cmd_eval,
        "perplexity of a trained run at several lengths (for an mlm run: masked-token accuracy "
        "and MLM perplexity)",
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--extend",
        choices=EXTENSION_NAMES,
        default=None,
        help="evaluate a rope run with an inference-time extension, set per length",
    )
    p.add_argument("--lengths", type=length_list, required=True, help="e.g. 128,256,512")
    p.add_argument("--protocol", choices=("nonoverlap", "sliding"), default="nonoverlap")
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default L/2)")
    p.add_argument("--data", default=None, help="default: the corpus the run trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on scored tokens per length")
    p.add_argument("--out", default=None, help="write the results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per length")
    p.add_argument(
        "--mask-seed",
        type=int,
        default=None,
        help="mlm runs: seed of the masks (default 0; the same masked tokens at every length)",
    )
    p.add_argument(
        "--per-position",
        default=None,
        metavar="FILE.png",
        help="plot loss by position (log-x) to FILE.png, curves to FILE.positions.json",
    )

    p = add_command(
        sub, "generate", cmd_generate, "sample text from a trained run (with a KV cache)"
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--extend",
        choices=EXTENSION_NAMES,
        default=None,
        help="generate from a rope run with an inference-time extension for the full length",
    )
    p.add_argument("--prompt", default=None, help="text to continue (streams to stdout)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    from extrapos.cli.dialogue import add_generate_arguments

    add_generate_arguments(p)
