"""`extrapos list` and `extrapos profile`: what is registered and what it costs."""

from __future__ import annotations

import argparse
from pathlib import Path

from extrapos.cli.args import add_command, length_list, name_list


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


def cmd_profile(args: argparse.Namespace) -> None:
    from extrapos.core.files import write_bytes, write_json, write_text
    from extrapos.encodings import encoding_class
    from extrapos.probes.cost import markdown, plot, profile

    for method in args.methods:
        encoding_class(method)  # unknown -> one line listing the known names
    result = profile(
        args.methods,
        args.lengths,
        repeats=args.repeats,
        n_layer=args.n_layer,
        n_head=args.n_head,
        d_model=args.d_model,
        train_lengths=args.train_lengths,
    )
    out = Path(args.out)
    table = markdown(result)
    write_json(out / "profile.json", result)
    write_text(out / "profile.md", table + "\n")
    write_bytes(out / "profile.png", plot(result))
    print(table)
    print(f"wrote {out / 'profile.json'}, profile.md and profile.png")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "list", cmd_list, "list the registered positional encodings and their parameters"
    )

    p = add_command(
        sub, "profile", cmd_profile, "time and memory vs sequence length per encoding, fitted"
    )
    p.add_argument(
        "--methods", type=name_list, default=["nope", "rope", "alibi", "t5", "kerple_log"]
    )
    p.add_argument(
        "--lengths",
        type=length_list,
        default=[512, 1024, 2048, 4096],
        help="inference forward lengths (comma-separated)",
    )
    p.add_argument(
        "--train-lengths",
        type=length_list,
        default=[],
        help="training-step (forward + backward) lengths, e.g. 512,1024,2048,4096 (default: none)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--out", default="profile_out", help="output directory")
