"""Rows of figures as a table a reader scans: aligned text for the terminal, Markdown for the
results folders. The one table writer of the bench's commands and the benchmarks/ scripts; each
caller formats its own cells (the figures' units and digits are its to choose)."""
from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?\s*[%x]?|-|")


def _cells(headers, rows) -> tuple[list[str], list[list[str]]]:
    heads = [str(h) for h in headers]
    body = [["" if c is None else str(c) for c in row] for row in rows]
    for row in body:
        if len(row) != len(heads):
            raise ValueError(f"a row has {len(row)} cells for {len(heads)} columns: {row}")
    return heads, body


def text(headers, rows, indent: str = "") -> str:
    """Columns padded to their widest cell; a column of numbers is right-aligned."""
    heads, body = _cells(headers, rows)
    widths = [max(len(c) for c in col) for col in zip(heads, *body)]
    numeric = [bool(body) and all(_NUMBER.fullmatch(r[i]) for r in body) for i in range(len(heads))]

    def line(cells):
        return indent + "  ".join(c.rjust(w) if num else c.ljust(w)
                                  for c, w, num in zip(cells, widths, numeric)).rstrip()
    return "\n".join([line(heads), *(line(r) for r in body)])


def markdown(headers, rows) -> str:
    """A Markdown table; a column of numbers is right-aligned."""
    heads, body = _cells(headers, rows)
    numeric = [bool(body) and all(_NUMBER.fullmatch(r[i]) for r in body) for i in range(len(heads))]
    return "\n".join(["| " + " | ".join(heads) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
                      *("| " + " | ".join(r) + " |" for r in body)])


def share(count: int | float, n: int, low: float, high: float) -> str:
    """A share with its 95% interval, in percent: "87% [62, 96] of 15"."""
    return f"{100 * count / n:.0f}% [{100 * low:.0f}, {100 * high:.0f}] of {n}" if n else "-"
