"""`extrapos translate train|eval|generate` and the translation bench suite's flags.

extrapos translate train --data DIR --src en --tgt de --encoding NAME [--encoding-params JSON]
    [--max-src-tokens N] [--steps N] [--n-layer N] [--d-model N] [--n-head N] [--seed N]
    --out RUN [--resume]
extrapos translate eval RUN (--data DIR --split NAME | --src-file F --ref-file F)
    [--concat 1,2,4,8] [--beam 4] --out EVAL.json
extrapos translate generate RUN      (stdin -> stdout, one sentence per line)
extrapos bench --suite translation --data DIR --src en --tgt de [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.settings import field_default
from extrapos.models.seq2seq_config import Seq2SeqConfig
from extrapos.training.translation_config import TranslationTrainConfig

#: the true defaults the flags show (the config measured to reach BLEU >= 30 in 30 min; README),
#: read from the fields (creating a Seq2SeqConfig validates its encoding, which imports torch)
TRAIN_DEFAULTS = SimpleNamespace(
    **{f.name: field_default(f) for f in fields(TranslationTrainConfig)}
)
MODEL_DEFAULTS = SimpleNamespace(**{f.name: field_default(f) for f in fields(Seq2SeqConfig)})


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist; give a file with one sentence per line")
    lines = p.read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def cmd_translate_train(args: argparse.Namespace) -> None:
    from extrapos.data.parallel import load_parallel
    from extrapos.training.translation import TranslationTrainConfig, train_translation

    data = load_parallel(args.data, args.src, args.tgt)
    steps = args.steps
    if steps is None and args.resume:
        from extrapos.training.run_dir import load_config

        steps = load_config(args.out)["train"]["steps"]
    train_cfg = TranslationTrainConfig(
        steps=steps or TRAIN_DEFAULTS.steps,
        max_tokens=args.max_tokens,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        vocab_size=args.vocab_size,
        max_src_tokens=args.max_src_tokens,
        save_every=args.save_every,
        eval_every=args.eval_every,
        device=args.device,
    )
    model_cfg = {
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "d_model": args.d_model,
        "encoding": args.encoding,
        "encoding_params": args.encoding_params or {},
        "dropout": args.dropout,
    }
    summary = train_translation(
        data, model_cfg, train_cfg, args.out, resume=args.resume, data_spec=args.data
    )
    print(
        f"trained {summary['steps']} steps on {summary['kept_pairs']} of "
        f"{summary['train_pairs']} pairs (max-src-tokens {summary['max_src_tokens']}); final "
        f"loss {summary['final_loss']:.3f}; valid loss {summary['valid_loss']}; "
        f"{summary['train_seconds']:.0f} s; wrote {args.out}"
    )


def cmd_translate_eval(args: argparse.Namespace) -> None:
    from extrapos.core.files import write_json
    from extrapos.probes.translation import evaluate_translation
    from extrapos.training.run_dir import load_config
    from extrapos.training.translation import load_seq2seq

    model, tokenizer = load_seq2seq(args.run_dir)
    if args.src_file or args.ref_file:
        if not (args.src_file and args.ref_file) or args.data:
            raise UserError("give --src-file and --ref-file together, or --data with --split")
        sources, refs = _read_lines(args.src_file), _read_lines(args.ref_file)
        if len(sources) != len(refs):
            raise UserError(
                f"{args.src_file} has {len(sources)} lines but {args.ref_file} has {len(refs)}; "
                "they must be line-aligned"
            )
    else:
        from extrapos.data.parallel import load_parallel

        saved = load_config(args.run_dir)["data"]
        data = load_parallel(args.data or saved["data"], saved["src"], saved["tgt"])
        pairs = data.split(args.split)
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    if args.max_sentences is not None:
        sources, refs = sources[: args.max_sentences], refs[: args.max_sentences]
    t0 = time.perf_counter()
    result = evaluate_translation(
        model, tokenizer, sources, refs, args.concat, args.beam, args.length_penalty,
        args.max_len_a, args.max_len_b,
    )  # fmt: skip
    result["seconds"] = time.perf_counter() - t0
    hyps = result.pop("hypotheses")
    if args.hyp_out:
        from extrapos.core.files import write_text

        write_text(args.hyp_out, "\n".join(hyps) + "\n")
    print(
        f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  len ratio "
        f"{result['len_ratio']:.3f}  ({result['n_sentences']} sentences, beam {args.beam}, "
        f"k=1 decode {result['decode_seconds']['1']:.1f} s)"
    )
    for k, s in result["concat"].items():
        print(
            f"  concat k={k}: BLEU {s['bleu']:.2f} chrF {s['chrf']:.2f} ratio {s['len_ratio']:.3f}"
        )
    for b, s in result["buckets"].items():
        if s["n"]:
            print(f"  bucket {b:>6}: BLEU {s['bleu']:.2f} ratio {s['len_ratio']:.3f} (n={s['n']})")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


def cmd_translate_generate(args: argparse.Namespace) -> None:
    from extrapos.probes.translation import translate_texts
    from extrapos.training.translation import load_seq2seq

    model, tokenizer = load_seq2seq(args.run_dir)
    for line in sys.stdin:
        text = line.rstrip("\n")
        out = (
            translate_texts(model, tokenizer, [text], args.beam, args.length_penalty)
            if text.strip()
            else [""]
        )
        print(out[0], flush=True)


def register(sub: Any) -> None:
    """Add `translate` (with train / eval / generate) to the top-level subparsers."""
    top = sub.add_parser(
        "translate",
        help="encoder-decoder translation: train short, translate long",
        description="encoder-decoder translation: train short, translate long",
    )
    tsub = top.add_subparsers(dest="translate_command", required=True, metavar="COMMAND")

    p = tsub.add_parser("train", help="train a Seq2Seq on {split}.{lang} files or hf:NAME")
    p.set_defaults(fn=cmd_translate_train)
    p.add_argument("--data", required=True, help="folder of {split}.{lang} files, or hf:NAME")
    p.add_argument("--src", required=True, help="source language suffix, e.g. en")
    p.add_argument("--tgt", required=True, help="target language suffix, e.g. de")
    p.add_argument("--encoding", default="sinusoidal", help="encoding name (see `extrapos list`)")
    p.add_argument("--encoding-params", type=_json_object, default=None, metavar="JSON")
    p.add_argument(
        "--max-src-tokens",
        type=int,
        default=None,
        help="train only on pairs with a source this short",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (default {TRAIN_DEFAULTS.steps}; resume: the run's)",
    )
    for flag, kind, value, what in (
        ("--max-tokens", int, TRAIN_DEFAULTS.max_tokens, "padded tokens per batch side"),
        ("--lr", float, TRAIN_DEFAULTS.lr, "peak learning rate"),
        ("--warmup-steps", int, TRAIN_DEFAULTS.warmup_steps, "inverse-sqrt warmup"),
        ("--vocab-size", int, TRAIN_DEFAULTS.vocab_size, "joint BPE size"),
        ("--n-layer", int, MODEL_DEFAULTS.n_layer, "layers per stack"),
        ("--n-head", int, MODEL_DEFAULTS.n_head, "attention heads"),
        ("--d-model", int, MODEL_DEFAULTS.d_model, "model width"),
        ("--dropout", float, MODEL_DEFAULTS.dropout, "residual and embedding dropout"),
        ("--seed", int, TRAIN_DEFAULTS.seed, "random seed"),
        ("--save-every", int, TRAIN_DEFAULTS.save_every, "checkpoint every N steps"),
        ("--eval-every", int, TRAIN_DEFAULTS.eval_every, "validation loss every N steps"),
    ):
        p.add_argument(flag, type=kind, default=value, help=f"{what} (default {value})")
    p.add_argument("--device", default=TRAIN_DEFAULTS.device, help="auto (default), cpu, cuda")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")

    p = tsub.add_parser("eval", help="BLEU/chrF overall, by source length and concatenated")
    p.set_defaults(fn=cmd_translate_eval)
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="default: the data the run trained on")
    p.add_argument("--split", default="test_2016_flickr", help="default test_2016_flickr")
    p.add_argument("--src-file", default=None, help="source sentences, one per line")
    p.add_argument("--ref-file", default=None, help="reference translations, line-aligned")
    p.add_argument("--concat", type=_ints, default=[1, 2, 4, 8], help="default 1,2,4,8")
    p.add_argument("--beam", type=int, default=4, help="beam size (1: greedy; default 4)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="GNMT alpha (default 1)")
    p.add_argument("--max-len-a", type=float, default=1.5, help="max output a·|src| + b")
    p.add_argument("--max-len-b", type=int, default=10)
    p.add_argument("--max-sentences", type=int, default=None, help="score only the first N")
    p.add_argument("--hyp-out", default=None, help="also write the k=1 hypotheses here")
    p.add_argument("--out", default=None, help="write the scores to EVAL.json")

    p = tsub.add_parser("generate", help="translate stdin line by line")
    p.set_defaults(fn=cmd_translate_generate)
    p.add_argument("run_dir")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--length-penalty", type=float, default=1.0)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The flags `extrapos bench --suite translation` adds to the bench command (it shares
    --methods, --seeds, --steps, --data, --lr, --n-layer, --n-head, --d-model, --vocab-size
    (joint BPE; default 4000 here) and --warmup-steps (default 150 here) with the LM suite;
    defaults: `extrapos.bench.translation.TranslationBenchConfig`)."""
    g = p.add_argument_group("translation suite (--suite translation)")
    g.add_argument("--src", default="en", help="source language (default en)")
    g.add_argument("--tgt", default="de", help="target language (default de)")
    g.add_argument("--max-src-tokens", type=int, default=None, help="train-short cut (16)")
    g.add_argument("--test-split", default=None, help="default test_2016_flickr")
    g.add_argument("--eval-sentences", type=int, default=None, help="first N test pairs")
    g.add_argument("--beam", type=int, default=None, help="beam size (default 4)")
    g.add_argument("--max-tokens", type=int, default=None, help="batch tokens (default 2048)")


#: LM-suite bench flags (args."bench.<field>") the translation suite also reads
_SHARED = (
    "methods", "seeds", "steps", "data", "lr", "n_layer", "n_head", "d_model", "vocab_size",
    "warmup_steps",
)  # fmt: skip


def cmd_bench_translation(args: argparse.Namespace) -> None:
    from extrapos.bench.translation import TranslationBenchConfig, run_translation_bench
    from extrapos.report.translation import translation_summary, write_translation_report

    shared = {k: getattr(args, f"bench.{k}", None) for k in _SHARED}
    if shared["data"] is None:
        raise UserError("--suite translation needs --data DIR (e.g. ../shared/data/multi30k)")
    overrides = {
        **shared,
        "src": args.src,
        "tgt": args.tgt,
        "max_src_tokens": args.max_src_tokens,
        "test_split": args.test_split,
        "eval_sentences": args.eval_sentences,
        "beam": args.beam,
        "max_tokens": args.max_tokens,
    }
    config = TranslationBenchConfig(**{k: v for k, v in overrides.items() if v is not None})
    results = run_translation_bench(config, args.out)
    write_translation_report(results, args.out)
    print(translation_summary(results), file=sys.stderr)
    print(
        f"wrote {Path(args.out) / 'results.json'}, report.md, report.html, translation.csv, plots"
    )
