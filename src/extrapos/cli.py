"""The `extrapos` command. Bad input prints one line on stderr and exits 2 (`--debug` shows the
traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from extrapos.cli_dialogue import add_generate_arguments
from extrapos.cli_dialogue import register as register_dialogue
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


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The train flags given on the command line, as config sections (unset flags omitted)."""
    sections = {
        "model": {
            "encoding": args.encoding,
            "encoding_params": args.encoding_params,
            "n_layer": args.n_layer,
            "n_head": args.n_head,
            "d_model": args.d_model,
        },
        "train": {
            "train_len": args.train_len,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "lr": args.lr,
            "min_lr_ratio": args.min_lr_ratio,
            "warmup_steps": args.warmup_steps,
            "weight_decay": args.weight_decay,
            "grad_clip": args.grad_clip,
            "grad_accum": args.grad_accum,
            "precision": args.precision,
            "compile": args.compile,
            "seed": args.seed,
            "save_every": args.save_every,
            "keep_last": args.keep_last,
            "device": args.device,
            "tensorboard": args.tensorboard,
            "loss_on": args.loss_on,
        },
        "data": {"name": args.data, "tokenizer": args.tokenizer, "vocab_size": args.vocab_size},
        "eval": {"every": args.eval_every, "max_tokens": args.eval_tokens},
    }
    return {k: {f: v for f, v in d.items() if v is not None} for k, d in sections.items()}


def cmd_train(args: argparse.Namespace) -> None:
    import math

    from extrapos.config import load_config_file, merge, parse_assignments
    from extrapos.train import init_distributed, run_training

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


def cmd_profile(args: argparse.Namespace) -> None:
    from extrapos.encodings import encoding_class
    from extrapos.io import write_bytes, write_json, write_text
    from extrapos.profile import markdown, plot, profile

    for method in args.methods:
        encoding_class(method)  # unknown -> one line listing the known names
    result = profile(
        args.methods,
        args.lengths,
        repeats=args.repeats,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
    )
    out = Path(args.out)
    table = markdown(result)
    write_json(out / "profile.json", result)
    write_text(out / "profile.md", table + "\n")
    write_bytes(out / "profile.png", plot(result))
    print(table)
    print(f"wrote {out / 'profile.json'}, profile.md and profile.png")


def _print_perplexities(records: list[dict[str, Any]]) -> None:
    """One line per evaluated length (or the reason a length could not be evaluated)."""
    for r in records:
        if r.get("ppl") is None:
            print(f"L={r['length']:>6}: n/a ({r['error']})")
            continue
        bpb = r["bits_per_byte"]
        bpb_text = "n/a" if bpb is None else f"{bpb:.4f}"
        print(
            f"L={r['length']:>6}: ppl {r['ppl']:.4f}  bits/byte {bpb_text}  "
            f"({r['tokens']:,} tokens scored, {r['windows']} windows)"
        )


def cmd_eval(args: argparse.Namespace) -> None:
    from extrapos.checkpoint import load_model
    from extrapos.evaluate import evaluate_lengths

    model = load_model(args.run_dir)
    if min(args.lengths) < 1:
        raise UserError(f"--lengths must be positive, got {args.lengths}")
    if not getattr(args, "extend", None):  # a learned table too short: say so before any work
        model.encoding.check_positions(max(args.lengths) - 1)
    corpus = _run_corpus(Path(args.run_dir), args.data)
    tokens = corpus.tokens(args.split, model.tokenizer)
    if getattr(args, "extend", None):
        records = _evaluate_extended(model, tokens, args)
    else:
        records = evaluate_lengths(
            model,
            tokens,
            args.lengths,
            protocol=args.protocol,
            stride=args.stride,
            max_tokens=args.max_tokens,
            progress=True,
        )
    _print_perplexities(records)
    payload = {
        "run_dir": str(args.run_dir),
        "corpus": corpus.name,
        "corpus_hash": corpus.content_hash,
        "split": args.split,
        "results": records,
    }
    _write_results(args.out, getattr(args, "csv", None), payload, records)
    if getattr(args, "per_position", None):
        from extrapos.checkpoint import load_config
        from extrapos.diagnostics import plot_position_nll, write_position_nll

        train_len = load_config(args.run_dir).get("train", {}).get("train_len")
        png = Path(args.per_position)
        plot_position_nll(
            records, png, train_len=train_len, title=f"loss by position: {args.run_dir}"
        )
        curves = png.with_suffix(".positions.json")  # never the --out file
        write_position_nll(records, curves, train_len=train_len)
        print(f"wrote {png} and {curves}")


def _train_len(run_dir: str) -> int:
    from extrapos.checkpoint import load_config

    train_len = load_config(run_dir).get("train", {}).get("train_len")
    if not train_len:
        raise UserError(f"{run_dir} records no train_len; --extend needs the trained length")
    return int(train_len)


def _evaluate_extended(model: Any, tokens: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each length with the RoPE extension set for it (factor = length / train length), over
    one trimmed stream so every length scores the same targets."""
    from extrapos.evaluate import common_prefix, evaluate_lengths
    from extrapos.extend import rope_extended

    train_len = _train_len(args.run_dir)
    tokens = tokens[: common_prefix(tokens.numel(), args.lengths, args.max_tokens)]
    records = []
    for length in args.lengths:
        with rope_extended(model, args.extend, train_len, length):
            records += evaluate_lengths(
                model, tokens, [length], protocol=args.protocol, stride=args.stride, progress=True
            )
        records[-1]["extension"] = args.extend
    return records


def cmd_generate(args: argparse.Namespace) -> None:
    import contextlib

    import torch

    from extrapos.checkpoint import load_model
    from extrapos.cli_dialogue import generate_stats, stream_generate
    from extrapos.extend import rope_extended

    model = load_model(args.run_dir)
    if args.stats:
        if args.extend:
            raise UserError("--stats does not take --extend; drop one of them")
        generate_stats(model, args)
        return
    if args.prompt is None:
        raise UserError("--prompt is required (or pass --stats to use held-out prompts)")
    prompt = model.tokenizer.encode(args.prompt)
    if prompt.numel() == 0:
        raise UserError("--prompt is empty; give at least one character")
    generator = torch.Generator().manual_seed(args.seed)
    total = prompt.numel() + args.max_new_tokens
    extension = (
        rope_extended(model, args.extend, _train_len(args.run_dir), total)
        if args.extend
        else contextlib.nullcontext()
    )
    with extension:
        stream_generate(model, prompt, args, generator)  # the same draws as model.generate


def cmd_bench(args: argparse.Namespace) -> None:
    from extrapos.bench import BenchConfig, run_bench

    if args.suite == "dialogue":
        from extrapos.cli_dialogue import bench_dialogue

        bench_dialogue(args)
        return

    config = BenchConfig.from_preset(
        args.preset,
        methods=args.methods,
        seeds=args.seeds,
        train_len=args.train_len,
        eval_lens=args.eval_lens,
        protocols=args.protocols,
        extensions=args.extensions,
        steps=args.steps,
        data=args.data,
        tokenizer=args.tokenizer,
        eval_tokens=args.eval_tokens,
        tasks=args.tasks,
        task_steps=args.task_steps,
        passkey_steps=args.passkey_steps,
        passkey_trials=args.passkey_trials,
        memory=args.memory,
    )
    run_bench(config, args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, report.md, report.html, results.csv, plots")


def cmd_report(args: argparse.Namespace) -> None:
    from extrapos.report import rerender

    target = rerender(args.dirs, args.out)
    print(f"wrote {target / 'report.md'}, report.html, results.csv and plots")


def _quiet_transformers() -> None:
    """No per-file progress bars or load reports from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_eval_hf(args: argparse.Namespace) -> None:
    import warnings

    from extrapos.data import load_corpus
    from extrapos.evaluate import evaluate_lengths
    from extrapos.hf import load_hf_model
    from extrapos.hf.adapter import FallbackWarning
    from extrapos.io import write_json

    _quiet_transformers()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FallbackWarning)
        model = load_hf_model(
            args.model_dir,
            rope=args.rope,
            interpolate_positions=args.interpolate_positions,
            dtype=args.dtype,
            device=args.device,
        )
    for w in caught:
        if issubclass(w.category, FallbackWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    corpus = load_corpus(args.data)
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
    _print_perplexities(records)
    if args.out:
        payload = {
            "model_dir": str(args.model_dir),
            "model_type": model.config.model_type,
            "rope": args.rope,
            "interpolate_positions": args.interpolate_positions,
            "tokenizer": model.tokenizer.to_dict(),
            "corpus": corpus.name,
            "corpus_hash": corpus.content_hash,
            "split": args.split,
            "results": records,
        }
        write_json(args.out, payload)
        print(f"wrote {args.out}")


def cmd_export_hf(args: argparse.Namespace) -> None:
    from extrapos.hf import export_hf

    _quiet_transformers()
    result = export_hf(
        args.run_dir, args.out_dir, max_position_embeddings=args.max_position_embeddings
    )
    print(
        f"exported {result['encoding']} as LlamaForCausalLM to {result['out_dir']} "
        f"(rope_parameters {json.dumps(result['rope_parameters'])}; tokenizer: "
        f"{result['tokenizer']}); reloaded offline, max |logit difference| "
        f"{result['max_abs_diff']:.2e}"
    )


def _float_list(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _write_results(
    out: str | None, csv_path: str | None, payload: dict[str, Any], records: list[dict[str, Any]]
) -> None:
    """--out FILE.json (the payload) or FILE.csv (the records, one row each); --csv FILE.csv."""
    from extrapos.evaluate import write_records_csv
    from extrapos.io import write_json

    for path, as_csv in ((out, out is not None and out.endswith(".csv")), (csv_path, True)):
        if path:
            if as_csv:
                write_records_csv(path, records)
            else:
                write_json(path, payload)
            print(f"wrote {path}")


def _table(rows: list[str], cols: list[Any], cell: Callable[[str, Any], str], corner: str) -> None:
    """Print a rows x lengths table of cell(row, col) strings."""
    width = max(12, *(len(r) for r in rows))
    cells = {(r, c): cell(r, c) for r in rows for c in cols}
    col_w = max(9, *(len(v) for v in cells.values()), *(len(str(c)) + 2 for c in cols))
    print(f"{corner:<{width}} " + " ".join(f"{'L=' + str(c):>{col_w}}" for c in cols))
    for r in rows:
        print(f"{r:<{width}} " + " ".join(f"{cells[(r, c)]:>{col_w}}" for c in cols))


def cmd_tasks(args: argparse.Namespace) -> None:
    from extrapos.model import GPTConfig
    from extrapos.tasks import evaluate_task, get_task, list_tasks, train_on_task

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
    _table(args.encoding, eval_lens, cell, "encoding")
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
    _write_results(args.out, args.csv, payload, records)


def cmd_passkey(args: argparse.Namespace) -> None:
    from extrapos.checkpoint import load_model
    from extrapos.passkey import INTRO, finetune_passkey, passkey_grid

    model = load_model(args.run_dir)
    intro = "" if args.no_intro else INTRO
    if args.finetune_steps:
        info = finetune_passkey(
            model,
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
    _table([str(d) for d in args.depths], args.lengths, cell, "depth")
    payload = {
        "run_dir": str(args.run_dir),
        "finetune_steps": args.finetune_steps,
        "finetune_len": args.finetune_len if args.finetune_steps else None,
        "results": records,
    }
    _write_results(args.out, args.csv, payload, records)


def cmd_diagnose(args: argparse.Namespace) -> None:
    from extrapos.checkpoint import load_model
    from extrapos.diagnostics import attention_stats, plot_attention_stats

    model = load_model(args.run_dir)
    tokens = _run_corpus(Path(args.run_dir), args.data).tokens(args.split, model.tokenizer)
    records = attention_stats(model, tokens, args.lengths, n_windows=args.windows)
    by = {(f"layer {r['layer']} head {r['head']}", r["length"]): r for r in records}
    rows = list(dict.fromkeys(f"layer {r['layer']} head {r['head']}" for r in records))

    def cell(row: str, n: Any) -> str:
        r = by[(row, n)]
        return f"{r['entropy']:.2f}/{r['uniform_entropy']:.2f} d={r['mean_distance']:.0f}"

    print("attention entropy / entropy of uniform attention (nats); d = mean distance (tokens)")
    _table(rows, args.lengths, cell, "")
    if args.plot:
        plot_attention_stats(records, args.plot, title=f"attention: {args.run_dir}")
        print(f"wrote {args.plot}")
    payload = {"run_dir": str(args.run_dir), "split": args.split, "results": records}
    _write_results(args.out, args.csv, payload, records)


#: RoPE extensions selectable on eval/generate (extrapos.extend.EXTENSIONS; kept here so that
#: building the parser imports no torch)
EXTENSION_NAMES = ("linear", "ntk", "dynamic", "yarn", "llama3", "rerope", "self_extend", "logn")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (what is wrong and where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--encoding", default=None, help="encoding name (see `extrapos list`)")
    p.add_argument(
        "--encoding-params",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="encoding parameters, e.g. '{\"base\": 10000}'",
    )
    p.add_argument(
        "--data",
        default=None,
        help="'builtin' (default), a text file, a folder, a quoted glob ('dir/*.txt'), or "
        "hf:NAME[:CONFIG] (a Hugging Face dataset, e.g. hf:wikitext:wikitext-103-raw-v1)",
    )
    p.add_argument("--tokenizer", choices=("byte", "bpe"), default=None, help="default byte")
    p.add_argument(
        "--vocab-size", type=int, default=None, help="bpe vocabulary size (default 1024)"
    )
    p.add_argument("--train-len", type=int, default=None, help="default 128")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 400)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch: sequences per optimizer step over all ranks (default 16)",
    )
    p.add_argument(
        "--grad-accum", type=int, default=None, help="micro-steps per optimizer step (default 1)"
    )
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--min-lr-ratio", type=float, default=None, help="cosine floor (default 0.1)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps/10")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0.1")
    p.add_argument("--grad-clip", type=float, default=None, help="0: off (default 1.0)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="bf16: autocast matmuls (weights and positional math stay fp32); default fp32",
    )
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile"
    )
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--n-layer", type=int, default=None, help="default 4")
    p.add_argument("--n-head", type=int, default=None, help="default 4")
    p.add_argument("--d-model", type=int, default=None, help="default 128")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="validation loss every N steps (default steps/10; 0: never)",
    )
    p.add_argument(
        "--eval-tokens", type=int, default=None, help="valid targets per validation (default 16384)"
    )
    p.add_argument(
        "--save-every", type=int, default=None, help="checkpoint every N steps (0: at the end)"
    )
    p.add_argument(
        "--keep-last",
        type=int,
        default=None,
        help="step checkpoints kept in RUN_DIR/checkpoints (default 1; 0: all)",
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also log to RUN_DIR/tb (needs tensorboard); log.csv is always written",
    )
    p.add_argument(
        "--loss-on",
        choices=("all", "responses"),
        default=None,
        help="loss targets: every token (default) or, on a dialogue folder, the response turns",
    )
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints of an earlier run in --out and start over",
    )

    p = add("eval", cmd_eval, "perplexity of a trained run at several lengths")
    p.add_argument("run_dir")
    p.add_argument(
        "--extend",
        choices=EXTENSION_NAMES,
        default=None,
        help="evaluate a rope run with an inference-time extension, set per length",
    )
    p.add_argument("--lengths", type=_int_list, required=True, help="e.g. 128,256,512")
    p.add_argument("--protocol", choices=("nonoverlap", "sliding"), default="nonoverlap")
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default L/2)")
    p.add_argument("--data", default=None, help="default: the corpus the run trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on scored tokens per length")
    p.add_argument("--out", default=None, help="write the results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per length")
    p.add_argument(
        "--per-position",
        default=None,
        metavar="FILE.png",
        help="plot loss by position (log-x) to FILE.png, curves to FILE.positions.json",
    )

    p = add("generate", cmd_generate, "sample text from a trained run (with a KV cache)")
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
    add_generate_arguments(p)

    p = add("bench", cmd_bench, "train every method short, evaluate long, write a report")
    p.add_argument(
        "--suite",
        choices=("lm", "dialogue"),
        default="lm",
        help="lm (default): language modelling, tasks, passkey; dialogue: history use, recall "
        "and long generation on a DailyDialog folder (--data)",
    )
    p.add_argument(
        "--preset",
        choices=("quick", "standard", "paper"),
        default="quick",
        help="quick (default, minutes on 2 cores), standard (every encoding, 3 seeds), paper (GPU)",
    )
    p.add_argument("--methods", type=_name_list, default=None, help="comma-separated encodings")
    p.add_argument("--seeds", type=_int_list, default=None, help="comma-separated seeds")
    p.add_argument("--train-len", type=int, default=None, help="default 128")
    p.add_argument(
        "--eval-lens", type=_int_list, default=None, help="default 1,2,4,8,16 × train-len"
    )
    p.add_argument("--protocols", type=_name_list, default=None, help="default nonoverlap,sliding")
    p.add_argument(
        "--extensions",
        type=lambda text: [] if text.strip() in ("", "none") else _name_list(text),
        default=None,
        help="RoPE scalings applied to the trained rope model (default linear,ntk,dynamic,yarn,"
        "llama3; 'none' for none)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps per method")
    p.add_argument("--data", default=None, help="'builtin' (default), a text file or a folder")
    p.add_argument("--tokenizer", default=None, help="default byte")
    p.add_argument("--eval-tokens", type=int, default=None, help="targets scored per length")
    p.add_argument(
        "--tasks",
        type=lambda text: [] if text.strip() in ("", "none") else _name_list(text),
        default=None,
        help="synthetic tasks (see `extrapos tasks --list`; 'none' for none)",
    )
    p.add_argument("--task-steps", type=int, default=None, help="training steps per task model")
    p.add_argument(
        "--passkey-steps", type=int, default=None, help="passkey fine-tune steps (0: no passkey)"
    )
    p.add_argument("--passkey-trials", type=int, default=None, help="keys per (length, depth)")
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure a forward's time and peak memory at the longest length (default on)",
    )
    p.add_argument("--out", default="bench_out", help="output directory (default bench_out)")

    p = add("profile", cmd_profile, "time and memory vs sequence length per encoding, fitted")
    p.add_argument(
        "--methods", type=_name_list, default=["nope", "rope", "alibi", "t5", "kerple_log"]
    )
    p.add_argument("--lengths", type=_int_list, default=[512, 1024, 2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--out", default="profile_out", help="output directory")

    p = add("report", cmd_report, "re-render (or merge) reports from bench results.json")
    p.add_argument("dirs", nargs="+", help="bench output directories")
    p.add_argument("--out", default=None, help="write the merged report here (several dirs)")

    p = add("eval-hf", cmd_eval_hf, "perplexity vs length of a local transformers model folder")
    p.add_argument("model_dir", help="a save_pretrained folder (config.json, weights, tokenizer)")
    p.add_argument("--lengths", type=_int_list, required=True, help="e.g. 128,256,512")
    p.add_argument("--protocol", choices=("nonoverlap", "sliding"), default="nonoverlap")
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default L/2)")
    p.add_argument(
        "--rope",
        type=_json_object,
        default=None,
        metavar="JSON",
        help='replace the model\'s RoPE scaling, e.g. \'{"rope_type": "yarn", "factor": 4}\'',
    )
    p.add_argument(
        "--interpolate-positions",
        type=int,
        default=None,
        metavar="N",
        help="stretch a learned position table (GPT-2, BERT) to N rows by linear interpolation",
    )
    p.add_argument("--data", default=None, help="'builtin' (default), a text file or a folder")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--max-tokens", type=int, default=None, help="cap on scored tokens per length")
    p.add_argument(
        "--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the results to this JSON file")

    p = add("export-hf", cmd_export_hf, "write a rope/nope run as a LlamaForCausalLM folder")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="config.max_position_embeddings (default: the RoPE's own, else train_len)",
    )

    p = add("tasks", cmd_tasks, "train on a synthetic task at short sizes, accuracy by size")
    p.add_argument("--list", action="store_true", help="list the tasks and their parameters")
    p.add_argument("--task", default=None, help="task name (see --list)")
    p.add_argument("--task-params", type=_json_object, default={}, metavar="JSON")
    p.add_argument("--encoding", type=_name_list, default=None, help="encoding(s), comma-separated")
    p.add_argument("--encoding-params", type=_json_object, default={}, metavar="JSON")
    p.add_argument("--train-len", type=int, default=16, help="train on sizes 1..N (default 16)")
    p.add_argument("--eval-lens", type=_int_list, default=None, help="default 1,2,4,8 x train-len")
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

    p = add("passkey", cmd_passkey, "passkey retrieval of a trained run by length and depth")
    p.add_argument("run_dir")
    p.add_argument("--lengths", type=_int_list, required=True, help="e.g. 256,512,1024")
    p.add_argument("--depths", type=_float_list, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--trials", type=int, default=10, help="random keys per (length, depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-intro", action="store_true", help="drop the intro sentence (short tests)")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune on passkeys first")
    p.add_argument("--finetune-len", type=int, default=256)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--out", default=None, help="write results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per (length, depth)")

    p = add("diagnose", cmd_diagnose, "attention entropy and distance per layer/head vs length")
    p.add_argument("run_dir")
    p.add_argument("--lengths", type=_int_list, required=True, help="e.g. 128,512,2048")
    p.add_argument("--windows", type=int, default=2, help="windows averaged per length")
    p.add_argument("--data", default=None, help="default: the corpus the run trained on")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--plot", default=None, help="write the plot to FILE.png")
    p.add_argument("--out", default=None, help="write results to FILE.json (or FILE.csv)")
    p.add_argument("--csv", default=None, help="also write one CSV row per (layer, head, length)")
    register_dialogue(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
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
