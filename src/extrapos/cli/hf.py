"""`extrapos eval-hf` and `extrapos export-hf`: transformers interop."""

from __future__ import annotations

import argparse
import json
import sys

from extrapos.cli.args import (
    add_command,
    json_object,
    length_list,
    print_perplexities,
    quiet_transformers,
)


def cmd_eval_hf(args: argparse.Namespace) -> None:
    import warnings

    from extrapos.core.files import write_json
    from extrapos.data import load_corpus
    from extrapos.hf import load_hf_model
    from extrapos.hf.adapter import FallbackWarning
    from extrapos.probes.perplexity import evaluate_lengths

    quiet_transformers()
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
        token_bytes=model.tokenizer.token_bytes(),
    )
    print_perplexities(records)
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

    quiet_transformers()
    result = export_hf(
        args.run_dir, args.out_dir, max_position_embeddings=args.max_position_embeddings
    )
    print(
        f"exported {result['encoding']} as LlamaForCausalLM to {result['out_dir']} "
        f"(rope_parameters {json.dumps(result['rope_parameters'])}; tokenizer: "
        f"{result['tokenizer']}); reloaded offline, max |logit difference| "
        f"{result['max_abs_diff']:.2e} over {result['check_length']} tokens"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "eval-hf", cmd_eval_hf, "perplexity vs length of a local transformers model folder"
    )
    p.add_argument("model_dir", help="a save_pretrained folder (config.json, weights, tokenizer)")
    p.add_argument("--lengths", type=length_list, required=True, help="e.g. 128,256,512")
    p.add_argument("--protocol", choices=("nonoverlap", "sliding"), default="nonoverlap")
    p.add_argument("--stride", type=int, default=None, help="sliding stride (default L/2)")
    p.add_argument(
        "--rope",
        type=json_object,
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

    p = add_command(
        sub, "export-hf", cmd_export_hf, "write a rope/nope run as a LlamaForCausalLM folder"
    )
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="config.max_position_embeddings (default: the RoPE's own, else train_len)",
    )
