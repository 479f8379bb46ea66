"""Table helpers shared by the report modules."""

from __future__ import annotations


def _leading_number(cell: str) -> float | None:
    try:
        return float(cell.strip("*").split(" ")[0].replace(",", ""))
    except ValueError:
        return None


def mark_best(rows: list[list[str]], columns: range, lower: bool) -> list[list[str]]:
    """The best value of each column in `columns` (lowest when `lower`, else highest; ties
    too; none when the whole column ties) wrapped in Markdown bold `**…**` (the HTML report renders it as <b>)."""
    rows = [list(r) for r in rows]
    for j in columns:
        values = [_leading_number(r[j]) if j < len(r) else None for r in rows]
        known = [v for v in values if v is not None]
        if len(known) < 2 or min(known) == max(known):
            continue  # nothing to tell apart
        best = min(known) if lower else max(known)
        for r, v in zip(rows, values, strict=True):
            if v == best:
                r[j] = f"**{r[j]}**"
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
