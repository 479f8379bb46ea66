"""The `extrapos` command. Bad input prints one line on stderr and exits 2 (`--debug` shows the
traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from extrapos.errors import UserError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def cmd_list(args: argparse.Namespace) -> None:
    from extrapos.encodings import encoding_class, encoding_parameters, list_encodings
    from extrapos.encodings.registry import MODEL_DIMENSIONS

    for name in list_encodings():
        cls = encoding_class(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        params = [p for p in encoding_parameters(name) if p not in MODEL_DIMENSIONS]
        print(f"{name:12s} {summary}")
        if params:
            print(f"{'':12s}   params: {', '.join(params)}")


def cmd_train(args: argparse.Namespace) -> None:
    from extrapos.data import build_tokenizer, load_corpus
    from extrapos.model import GPTConfig
    from extrapos.train import TrainConfig, train

    tokenizer = build_tokenizer(args.tokenizer)
    model_config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        encoding=args.encoding,
        encoding_params=args.encoding_params,
    )
    train_config = TrainConfig(
        train_len=args.train_len,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps
        if args.warmup_steps is not None
        else max(1, args.steps // 10),
        seed=args.seed,
        save_every=args.save_every,
    )
    result = train(
        model_config,
        train_config,
        load_corpus(args.data),
        tokenizer,
        run_dir=args.out,
        resume=args.resume,
        description=f"train {args.encoding}",
    )
    print(
        f"trained {args.encoding}: final loss {result.losses[-1]:.4f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; saved to {args.out}"
    )


def _run_corpus(run_dir: Path, data: str | None) -> Any:
    from extrapos.checkpoint import load_config
    from extrapos.data import load_corpus

    if data is not None:
        return load_corpus(data)
    recorded = load_config(run_dir).get("data", {})
    name = recorded.get("name")
    corpus = load_corpus(None if name in (None, "builtin") else name)
    if recorded.get("content_hash") not in (None, corpus.content_hash):
        print(
            f"warning: the corpus at {name} changed since training (hash differs)",
            file=sys.stderr,
        )
    return corpus


def cmd_eval(args: argparse.Namespace) -> None:
    from extrapos.checkpoint import load_model
    from extrapos.evaluate import evaluate_lengths
    from extrapos.io import write_json

    model = load_model(args.run_dir)
    corpus = _run_corpus(Path(args.run_dir), args.data)
    tokens = corpus.tokens(args.split, model.tokenizer)
    records = evaluate_lengths(
        model,
        tokens,
        args.lengths,
        protocol=args.protocol,
        stride=args.stride,
        max_tokens=args.max_tokens,
        progress=True,
    )
    for r in records:
        if r.get("ppl") is None:
            print(f"L={r['length']:>6}: n/a ({r['error']})")
        else:
            bpb = r["bits_per_byte"]
            print(
                f"L={r['length']:>6}: ppl {r['ppl']:.4f}  bits/byte {bpb:.4f}  "
                f"({r['tokens']:,} tokens scored, {r['windows']} windows)"
            )
    if args.out:
        payload = {
            "run_dir": str(args.run_dir),
            "corpus": corpus.name,
            "corpus_hash": corpus.content_hash,
            "split": args.split,
            "results": records,
        }
        write_json(args.out, payload)
        print(f"wrote {args.out}")


def cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from extrapos.checkpoint import load_model

    model = load_model(args.run_dir)
    prompt = model.tokenizer.encode(args.prompt)
    if prompt.numel() == 0:
        raise UserError("--prompt is empty; give at least one character")
    generator = torch.Generator().manual_seed(args.seed)
    out = model.generate(
        prompt[None, :],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
    )
    print(model.tokenizer.decode(out[0]))


def cmd_bench(args: argparse.Namespace) -> None:
    from extrapos.bench import BenchConfig, run_bench

    overrides = {
        k: v
        for k, v in {
            "methods": args.methods,
            "train_len": args.train_len,
            "eval_lens": args.eval_lens,
            "steps": args.steps,
            "data": args.data,
            "seed": args.seed,
            "tokenizer": args.tokenizer,
            "eval_tokens": args.eval_tokens,
        }.items()
        if v is not None
    }
    config = BenchConfig(**overrides)
    run_bench(config, args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, report.md, report.html and plots")


def cmd_report(args: argparse.Namespace) -> None:
    from extrapos.report import rerender

    for run_dir in args.dirs:
        rerender(run_dir)
        print(f"wrote {Path(run_dir) / 'report.md'} and report.html")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extrapos",
        description="Positional encodings that extrapolate: train short, test long.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    add("list", cmd_list, "list the registered positional encodings and their parameters")

    p = add("train", cmd_train, "train one model and save it to a run directory")
    p.add_argument("--encoding", required=True, help="encoding name (see `extrapos list`)")
    p.add_argument(
        "--encoding-params",
        type=_json_object,
        default={},
        metavar="JSON",
        help="encoding parameters, e.g. '{\"base\": 10000}'",
    )
    p.add_argument("--data", default=None, help="'builtin' (default), a text file or a folder")
    p.add_argument("--tokenizer", default="byte")
    p.add_argument("--train-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps/10")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save-every", type=int, default=0, help="checkpoint every N steps (0: at the end)"
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")

    p = add("eval", cmd_eval, "perplexity of a trained run at several lengths")
    p.add_argument("run_dir")
    p.add_argument("--lengths", type=_int_list, required=True, help="e.g. 128,256,512")
    p.add_argument("--protocol", choices=("nonoverlap", "sliding"), default="nonoverlap")
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default L/2)")
    p.add_argument("--data", default=None, help="default: the corpus the run trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on scored tokens per length")
    p.add_argument("--out", default=None, help="write the results to this JSON file")

    p = add("generate", cmd_generate, "sample text from a trained run (with a KV cache)")
    p.add_argument("run_dir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = add("bench", cmd_bench, "train every method short, evaluate long, write a report")
    p.add_argument("--methods", type=_name_list, default=None, help="comma-separated encodings")
    p.add_argument("--train-len", type=int, default=None, help="default 128")
    p.add_argument(
        "--eval-lens", type=_int_list, default=None, help="default 1,2,4,8,16 × train-len"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per method (default 300)"
    )
    p.add_argument("--data", default=None, help="'builtin' (default), a text file or a folder")
    p.add_argument("--tokenizer", default=None, help="default byte")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-tokens", type=int, default=None, help="targets scored per length")
    p.add_argument("--out", default="bench_out", help="output directory (default bench_out)")

    p = add("report", cmd_report, "re-render report.md/html from bench results.json")
    p.add_argument("dirs", nargs="+", help="bench output directories")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"extrapos: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("extrapos: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
