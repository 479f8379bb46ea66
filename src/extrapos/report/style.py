"""How the report tells 30 methods apart: one panel per family, and per method a colour, a line
style and a marker that no other method of its panel shares (the same in every plot).

Families (where position enters, `extrapos.encodings.base`):

| panel | methods |
|---|---|
| absolute | sinusoidal, learned, nope, functional, recurrent, ffn (input/FFN sites, or none) |
| rotary and extensions | rope, xpos, rerope, self_extend, string, hybrid, every `rope+<name>` |
| fixed and learned biases | alibi, t5, kerple_log, kerple_power, sandwich, fire |
| contextual | cope, dape, txl (scores that depend on content) |

A run records its encoding's module as `family` (benches from before that record nothing; the
table below covers every built-in name, an unknown one goes to "other").
"""

from __future__ import annotations

from typing import Any

PANELS = ("absolute", "rotary and extensions", "fixed and learned biases", "contextual", "other")

# encoding module (extrapos.encodings.<module>) -> panel
_MODULE_PANEL = {
    "absolute": "absolute",
    "functional": "absolute",
    "recurrent": "absolute",
    "ffn": "absolute",
    "rotary": "rotary and extensions",
    "xpos": "rotary and extensions",
    "rope_remap": "rotary and extensions",
    "hybrid": "rotary and extensions",
    "bias": "fixed and learned biases",
    "contextual": "contextual",
    "cope": "contextual",
    "transformer_xl": "contextual",
}

# the built-in encodings' modules, for results written before runs recorded `family`
_BUILTIN_MODULE = {
    "sinusoidal": "absolute", "learned": "absolute", "nope": "absolute",
    "functional": "functional", "recurrent": "recurrent", "ffn": "ffn",
    "rope": "rotary", "xpos": "xpos", "rerope": "rope_remap", "self_extend": "rope_remap",
    "string": "rope_remap", "hybrid": "hybrid",
    "alibi": "bias", "t5": "bias", "kerple_log": "bias", "kerple_power": "bias",
    "sandwich": "bias", "fire": "bias",
    "cope": "contextual", "dape": "contextual", "txl": "contextual",
}  # fmt: skip

COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def panel_of(run: dict[str, Any]) -> str:
    """The panel a run (or summary entry) belongs to."""
    if run.get("extends") or run["method"].startswith("rope+"):
        return "rotary and extensions"
    module = run.get("family") or _BUILTIN_MODULE.get(run["method"])
    return _MODULE_PANEL.get(module or "", "other")


def panels(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Entries grouped by panel, in `PANELS` order, empty panels left out."""
    grouped: dict[str, list[dict[str, Any]]] = {p: [] for p in PANELS}
    for entry in entries:
        grouped[panel_of(entry)].append(entry)
    return {p: e for p, e in grouped.items() if e}


def styles(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Method -> matplotlib keywords (color, linestyle, marker). Within a panel the j-th method
    gets colour j mod 10, line style j mod 4 and marker j mod 7: no two of the first 20 share
    colour and line style, and none of the first 140 all three."""
    out: dict[str, dict[str, Any]] = {}
    for members in panels(entries).values():
        for j, entry in enumerate(members):
            out[entry["method"]] = {
                "color": COLOURS[j % len(COLOURS)],
                "linestyle": LINESTYLES[j % len(LINESTYLES)],
                "marker": MARKERS[j % len(MARKERS)],
            }
    return out


def panel_figure(count: int, width: float = 5.4, height: float = 3.9) -> tuple[Any, list[Any]]:
    """A figure with `count` panels, two per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 if count == 1 else 2
    rows = -(-count // cols)
    # room right of each panel for its legend
    fig, axes = plt.subplots(
        rows, cols, figsize=((width + 1.7) * cols, height * rows), dpi=100, squeeze=False
    )
    fig.subplots_adjust(wspace=0.62, hspace=0.38)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def legend(ax: Any) -> None:
    """A legend right of the panel, outside the axes so it never covers a line; the figure is
    saved with bbox_inches='tight', which grows the canvas to hold it (never clipped)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
            frameon=False, handlelength=3.0,
        )  # fmt: skip


def plain_ticks(ax: Any, xs: list[int] | None = None) -> None:
    """Numbers as numbers on log axes (6, 8, 10 rather than 6×10⁰); `xs`: the x ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=6)
    if xs:
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
