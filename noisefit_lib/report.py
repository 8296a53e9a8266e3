"""Numbers into prose and tables, rounded so that stored outputs compare across machines.

Seeded CPU runs agree to about six significant digits across machines, so everything the book
shows goes through :func:`sig` (four significant digits by default).

Explained in: book/contributing.md (Numbers in prose).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any


def sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN and infinities pass through)."""
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    if not math.isfinite(value) or value == 0:
        return float(value)
    return float(f"{value:.{digits}g}")


def fmt(value: Any, digits: int = 4) -> str:
    """Format a table cell: floats to ``digits`` significant digits, the rest with ``str``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    rounded = sig(value, digits)
    if math.isfinite(rounded) and rounded == int(rounded) and abs(rounded) < 1e15:
        return str(int(rounded))  # 3270, not 3.27e+03
    return f"{rounded:.{digits}g}"


def glue(key: str, value: float | str, digits: int = 4) -> float | int | str:
    """Store ``value`` under ``key`` for ``{glue:text}`key``` in the book; return what was stored.

    Floats are rounded to ``digits`` significant digits first, so that stored outputs compare
    across machines; integers (counts, sizes) and strings (a verdict, say) are stored as they
    are. Works without ``myst_nb``
    too (a plain script on a GPU machine): then it prints the pair.
    """
    if isinstance(value, str):
        stored = value
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        stored = int(value)  # a count stays a count: "160 people", not "160.0 people"
    else:
        stored = sig(float(value), digits)
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        print(f"{key} = {stored}")
    else:
        myst_glue(key, stored, display=False)
    return stored


def table(
    rows: Sequence[Mapping[str, Any]], digits: int = 4, columns: Sequence[str] | None = None
) -> str:
    """A Markdown table of ``rows`` (dicts sharing keys), numbers to ``digits`` digits.

    Args:
        rows: one dict per row; keys become the header (put units in them).
        digits: significant digits for floats.
        columns: the columns to show, in order (default: the first row's keys).
    """
    if not rows:
        raise ValueError("table() needs at least one row")
    columns = list(columns or rows[0].keys())
    missing = [c for c in columns if any(c not in row for row in rows)]
    if missing:
        raise KeyError(f"rows lack column(s) {missing}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c], digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def show_table(
    rows: Sequence[Mapping[str, Any]], digits: int = 4, columns: Sequence[str] | None = None
) -> None:
    """Display :func:`table` as Markdown in a notebook, or print it in a plain script."""
    text = table(rows, digits=digits, columns=columns)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))
