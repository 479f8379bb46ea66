"""CLI of the dialogue suite: `extrapos dialogue eval`, `extrapos generate --stats` (and the
streaming of `generate`), `extrapos bench --suite dialogue`. `register(sub)` adds the
`dialogue` command group; cli/evaluate.py and cli/bench.py route the other two here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extrapos.cli.args import (
    add_command,
    add_dataclass_flags,
    dataclass_flags,
    length_list,
    run_corpus,
)
from extrapos.core.errors import UserError


def _train_len_of(run_dir: str | Path) -> int:
    from extrapos.training.run_dir import load_config

    train_len = load_config(run_dir).get("train", {}).get("train_len")
    if not train_len:
        raise UserError(f"{run_dir} records no train_len; pass --train-len")
    return int(train_len)


def _corpus_of(run_dir: str | Path, data: str | None) -> Any:
    return run_corpus(Path(run_dir), data)


# ----------------------------------------------------------------------------- dialogue eval


def cmd_dialogue_eval(args: argparse.Namespace) -> None:
    from extrapos.core.files import write_json
    from extrapos.probes.dialogue import DialogueEvalConfig, dialogue_eval
    from extrapos.training.run_dir import load_run

    run = load_run(args.run_dir)
    train_len = args.train_len or _train_len_of(args.run_dir)
    config = DialogueEvalConfig(
        train_len=train_len,
        max_len=args.max_len,
        max_dialogues=None if args.max_dialogues == 0 else args.max_dialogues,
        recall_factors=tuple(args.recall_factors),
        recall_trials=args.trials,
        candidates=args.candidates,
        seed=args.seed,
    )
    corpus = _corpus_of(args.run_dir, args.data)
    result = dialogue_eval(run.model, run.tokenizer, corpus, config, progress=True)
    print(f"history use ({result['n_dialogues']} test dialogues, L={train_len}; NLL per token):")
    for k, v in result["history"]["k"].items():
        print(f"  k={k:>3}: {_fmt(v)}")
    for b, v in result["history"]["by_length"].items():
        print(f"  history {b:>4} x L: {_fmt(v)}")
    print(f"recall across turns (chance {result['chance']:.2f}):")
    for d, acc in result["recall"].items():
        print(f"  distance {d:>6}: {acc:.3f}")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def register(sub: Any) -> None:
    """Add `dialogue eval` to the `extrapos` subcommands."""
    group = sub.add_parser("dialogue", help="dialogue probes of a trained run")
    inner = group.add_subparsers(dest="dialogue_command", required=True, metavar="COMMAND")
    p = add_command(
        inner,
        "eval",
        cmd_dialogue_eval,
        "history use (NLL given the last k turns) and recall across turns",
    )
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help="a DailyDialog folder (default: the run's corpus)")
    p.add_argument("--out", default=None, help="write EVAL.json")
    p.add_argument("--train-len", type=int, default=None, help="default: the run's train_len")
    p.add_argument("--max-len", type=int, default=None, help="longest dialogue (default 16 x L)")
    p.add_argument(
        "--max-dialogues", type=int, default=200, help="test dialogues used (default 200; 0: all)"
    )
    p.add_argument(
        "--recall-factors", type=length_list, default=[1, 2, 4, 8, 16], help="distances in L"
    )
    p.add_argument(
        "--trials",
        "--recall-trials",
        dest="trials",
        type=int,
        default=24,
        help="recall prompts per distance (default 24)",
    )
    p.add_argument("--candidates", type=int, default=5, help="answers ranked (chance = 1/N)")
    p.add_argument("--seed", type=int, default=0)


# ----------------------------------------------------------------------------- generate


class TextStream:
    """Prints the decoded text of a growing token sequence as it grows (waits while the end is
    an incomplete UTF-8 character)."""

    def __init__(self, tokenizer: Any, prefix: list[int], out: Any = None) -> None:
        self.tokenizer, self.ids, self.out = tokenizer, list(prefix), out or sys.stdout
        self.shown = 0
        self._flush()

    def _flush(self, final: bool = False) -> None:
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and not final:
            return
        self.out.write(text[self.shown :])
        self.out.flush()
        self.shown = len(text)

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._flush()

    def close(self) -> None:
        self._flush(final=True)
        self.out.write("\n")
        self.out.flush()


def stream_generate(
    model: Any, tokenizer: Any, prompt: Any, args: argparse.Namespace, generator: Any
) -> None:
    """Sample after `prompt` (1-D ids) and print the text as it is generated."""
    from extrapos.probes.generation import sample_continuations

    stream = TextStream(tokenizer, prompt.tolist())
    sample_continuations(
        model,
        prompt[None, :],
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        generator=generator,
        on_token=lambda t: stream.add(int(t[0])),
    )
    stream.close()


def generate_stats(model: Any, tokenizer: Any, args: argparse.Namespace) -> None:
    """`generate --stats`: continuations of held-out prompts to --total-len, rep-n/distinct-n and
    the true continuation's NLL per window; the first continuation streams to stdout."""
    from extrapos.core.files import write_json
    from extrapos.data.dialogue import DialogueCorpus
    from extrapos.probes.generation import generation_stats

    train_len = _train_len_of(args.run_dir)
    corpus = _corpus_of(args.run_dir, args.data)
    tokens = corpus.tokens("test", tokenizer)
    starts = (
        corpus.layout("test", tokenizer).turn_starts if isinstance(corpus, DialogueCorpus) else None
    )
    streams: list[TextStream] = []  # the first prompt's continuation, printed as it grows
    stats = generation_stats(
        model,
        tokenizer,
        tokens,
        train_len,
        total_len=args.total_len,
        prompts=args.prompts,
        window=args.window,
        n=args.ngram,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        starts=starts,
        on_start=lambda ids: streams.append(TextStream(tokenizer, ids)),
        on_token=lambda t: streams[0].add(int(t[0])),
    )
    streams[0].close()
    print(
        f"\nper window of {stats['window']} generated tokens (n = {stats['n']}):", file=sys.stderr
    )
    print(f"{'position':>9} {'rep-n':>7} {'ref':>6} {'distinct':>9} {'ref':>6} {'true NLL':>9}",
          file=sys.stderr)  # fmt: skip
    for i, pos in enumerate(stats["positions"]):
        cells = [stats[k][i] for k in ("rep_n", "reference_rep_n", "distinct_n",
                                       "reference_distinct_n", "true_nll")]  # fmt: skip
        shown = " ".join(f"{_fmt(c):>8}" for c in cells)
        print(f"{pos:>9} {shown}", file=sys.stderr)
    if args.stats_out:
        write_json(args.stats_out, stats)
        print(f"wrote {args.stats_out}", file=sys.stderr)
    if args.plot:
        from extrapos.core.files import write_bytes
        from extrapos.report.dialogue import plot_generation_runs

        name = model.config.encoding
        write_bytes(args.plot, plot_generation_runs({name: [stats]}, train_len))
        print(f"wrote {args.plot}", file=sys.stderr)


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """The `generate --stats` flags."""
    p.add_argument(
        "--stats",
        action="store_true",
        help="sample from held-out prompts to --total-len and measure rep-n, distinct-n and the "
        "true continuation's NLL per window of positions (no --prompt needed)",
    )
    p.add_argument("--data", default=None, help="--stats: default the run's corpus (test split)")
    p.add_argument("--prompts", type=int, default=4, help="--stats: held-out prompts")
    p.add_argument("--total-len", type=int, default=None, help="--stats: default 16 x train_len")
    p.add_argument("--window", type=int, default=None, help="--stats: default train_len")
    p.add_argument("--ngram", type=int, default=4, help="--stats: n of rep-n/distinct-n")
    p.add_argument("--stats-out", default=None, help="--stats: write FILE.json")
    p.add_argument("--plot", default=None, help="--stats: write FILE.png")


# ----------------------------------------------------------------------------- bench


#: where the dialogue suite's own bench flags are stored (args."dialogue.<field>")
SECTION = "dialogue"


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The probe-size flags `bench --suite dialogue` adds to the bench command, generated from
    the `DialogueBenchConfig` fields in `PROBE_FLAGS` (their defaults are the suite's)."""
    from extrapos.bench.dialogue_config import PROBE_FLAGS, DialogueBenchConfig

    g = p.add_argument_group("dialogue suite (--suite dialogue)")
    add_dataclass_flags(g, DialogueBenchConfig, SECTION, PROBE_FLAGS)  # type: ignore[arg-type]


def refuse_dialogue_flags(args: argparse.Namespace) -> None:
    """Another suite was chosen: the dialogue suite's own flags would be ignored, so refuse."""
    given = dataclass_flags(args, SECTION)
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise UserError(f"{flags} only apply to --suite dialogue; drop them or pass it")


def bench_dialogue(args: argparse.Namespace) -> None:
    """`bench --suite dialogue`: the bench flags that apply (methods, seeds, train-len, steps,
    batch-size, lr, tokenizer, model shape, data, out); the others are refused."""
    from extrapos.bench.dialogue import DialogueBenchConfig, run_dialogue_bench
    from extrapos.report.dialogue import write_dialogue_report

    given = dataclass_flags(args, "bench")
    data = given.pop("data", None)
    if data is None:
        raise UserError(
            "--suite dialogue needs --data DIR, a DailyDialog-format folder "
            "(e.g. ../shared/data/dailydialog)"
        )
    known = ("methods", "seeds", "train_len", "steps", "batch_size", "lr", "tokenizer",
             "n_layer", "n_head", "d_model")  # fmt: skip
    other = sorted(set(given) - set(known))
    if other:
        flags = ", ".join("--" + k.replace("_", "-") for k in other)
        raise UserError(f"--suite dialogue does not use {flags}; drop them")
    config = DialogueBenchConfig(data=data, **given, **dataclass_flags(args, SECTION))
    write_dialogue_report(run_dialogue_bench(config, args.out), args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, report.md and plots")
