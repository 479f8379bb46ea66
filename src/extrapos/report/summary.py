"""The LM bench's results per method, as tables: `summarize` (mean and 95% half-width over
seeds per protocol and length), the perplexity and cost tables of the report, and the summary
table the CLI prints. Reads results.json records only.
"""

from __future__ import annotations

from typing import Any

from extrapos.core.stats import mean_ci95
from extrapos.report.probes import cost_columns
from extrapos.report.tables import mark_best

__all__ = ["cost_table", "ppl_table", "run_ppl", "summarize", "summary_table"]


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per method (in order of first appearance): per protocol and length the mean
    perplexity and 95% half-width over seeds, the seeds, and mean costs."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        methods.setdefault(run["method"], []).append(run)
    protocols = results.get("protocols") or [results.get("protocol", "nonoverlap")]
    summary = []
    for method, runs in methods.items():
        per_protocol: dict[str, dict[str, tuple[float, float | None] | None]] = {}
        for protocol in protocols:
            per_len: dict[str, tuple[float, float | None] | None] = {}
            for length in map(str, results["eval_lens"]):
                values = [
                    v for r in runs if (v := run_ppl(r, protocol, length, protocols[0])) is not None
                ]
                per_len[length] = mean_ci95(values) if values else None
            per_protocol[protocol] = per_len
        summary.append(
            {
                "method": method,
                "seeds": [r.get("seed", 0) for r in runs],
                "ppl": per_protocol,
                "extends": runs[0].get("extends"),
                "num_params": runs[0]["num_params"],
                "train_seconds": sum(r["train_seconds"] for r in runs) / len(runs),
                "tokens_per_second": sum(r["tokens_per_second"] for r in runs) / len(runs),
                "eval_seconds": sum(r.get("eval_seconds", 0) for r in runs) / len(runs),
                "errors": {k: v for r in runs for k, v in (r.get("errors") or {}).items()},
            }
        )
    return summary


def run_ppl(run: dict[str, Any], protocol: str, length: str, primary: str) -> float | None:
    by_protocol = run.get("ppl_by_protocol")
    if by_protocol is not None:
        return by_protocol.get(protocol, {}).get(length)
    return run["ppl"].get(length) if protocol == primary else None


def _cell(entry: tuple[float, float | None] | None) -> str:
    if entry is None:
        return "n/a"
    mean, half = entry
    return f"{mean:.3f}" if half is None else f"{mean:.3f} ± {half:.3f}"


def ppl_table(results: dict[str, Any], protocol: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows: method, perplexity at each length, ratio longest / train length."""
    lens = [str(n) for n in results["eval_lens"]]
    train_len = str(results["train_len"])
    header = ["method", *[f"L={n}" for n in lens]]
    if train_len in lens:
        header.append(f"ppl@{lens[-1]} / ppl@{train_len}")
    rows = []
    for entry in summarize(results):
        ppl = entry["ppl"][protocol]
        row = [entry["method"], *[_cell(ppl[n]) for n in lens]]
        if train_len in lens:
            base, last = ppl[train_len], ppl[lens[-1]]
            row.append(f"{last[0] / base[0]:.2f}" if base and last else "n/a")
        rows.append(row)
    return header, mark_best(rows, range(1, len(header)), lower=True)


def cost_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Parameters, training time and throughput, evaluation time, and (where the bench
    measured them) time and peak-memory rise of one forward at the longest length."""
    header = ["method", "params", "train s", "train tokens/s", "eval s", "seeds"]
    measured = cost_columns(results)
    if measured:
        longest = max(results["eval_lens"])
        header += [f"forward s @ {longest}", f"peak MiB @ {longest}"]
        width = len(next(iter(measured.values())))
        if width == 3:
            header.append("attention path")
    rows = []
    for e in summarize(results):
        row = [
            e["method"],
            f"{e['num_params']:,}",
            "—" if e["extends"] else f"{e['train_seconds']:.0f}",
            "—" if e["extends"] else f"{e['tokens_per_second']:,.0f}",
            f"{e['eval_seconds']:.1f}",
            ",".join(map(str, e["seeds"])),
        ]
        if measured:
            row += list(measured.get(e["method"], ("—",) * width))
        rows.append(row)
    return header, rows


def summary_table(results: dict[str, Any]) -> str:
    """Method, ppl at the train length and at the longest length (mean over seeds, first
    protocol), their ratio and the rank by the longest length (1 = best)."""
    protocol = (results.get("protocols") or [results.get("protocol", "nonoverlap")])[0]
    train, longest = str(results["train_len"]), str(max(results["eval_lens"]))
    rows = []
    for entry in summarize(results):
        per_len = entry["ppl"][protocol]
        at_l = per_len.get(train) or per_len.get(str(min(results["eval_lens"])))
        at_max = per_len.get(longest)
        rows.append((entry["method"], at_l[0] if at_l else None, at_max[0] if at_max else None))
    ranked = sorted((r for r in rows if r[2] is not None), key=lambda r: r[2])
    rank = {r[0]: i + 1 for i, r in enumerate(ranked)}
    width = max(12, *(len(r[0]) for r in rows)) if rows else 12
    head = (
        f"{'method':<{width}} {'ppl@' + train:>10} {'ppl@' + longest:>11} {'ratio':>7} {'rank':>5}"
    )
    lines = [f"summary ({protocol}, mean over seeds; rank by ppl at {longest}):", head]
    for method, a, b in sorted(rows, key=lambda r: rank.get(r[0], len(rows) + 1)):
        ratio = f"{b / a:.2f}" if a and b else "n/a"
        lines.append(
            f"{method:<{width}} {a if a is None else f'{a:.3f}':>10} "
            f"{b if b is None else f'{b:.3f}':>11} {ratio:>7} {rank.get(method, '-'):>5}"
        )
    return "\n".join(lines)
