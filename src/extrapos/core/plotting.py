"""Figures as PNG bytes (matplotlib, headless Agg backend), for reports and plot files."""

from __future__ import annotations

import io
from typing import Any


def figure_png(fig: Any, tight: bool = True) -> bytes:
    """The figure as PNG bytes, then closed. `tight`: `tight_layout` first; otherwise the
    saved box grows to fit everything drawn (legends outside the axes are never clipped)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches=None if tight else "tight")
    plt.close(fig)
    return buf.getvalue()
