"""Numbers into prose and tables, rounded so that stored outputs compare across machines.

Seeded CPU runs agree to about six significant digits across machines, so everything the book
shows goes through :func:`sig` (four significant digits by default). :func:`glue` puts one
finished number (or an interval, or a verdict) into the prose, :func:`glue_all` a dict of them;
:func:`show_table` shows rows (a DataFrame or a list of dicts) as a Markdown table.

A key that names a verdict (it contains ``verdict``) only takes a value of the book's verdict
vocabulary (:mod:`noisefit_lib.verdicts`): anything else raises.

Explained in: book/contributing.md (Numbers in prose; Results and verdicts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from noisefit_lib import verdicts
from noisefit_lib.stats import Estimate


def sig(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN and infinities pass through)."""
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits}")
    if not math.isfinite(value) or value == 0:
        return float(value)
    return float(f"{value:.{digits}g}")


def fmt(value: Any, digits: int = 4) -> str:
    """Format a table cell: floats to ``digits`` significant digits, the rest with ``str``."""
    if isinstance(value, bool | numbers.Integral) or not isinstance(value, numbers.Real):
        return str(value)
    rounded = sig(float(value), digits)
    if math.isfinite(rounded) and rounded == int(rounded) and abs(rounded) < 1e15:
        return str(int(rounded))  # 3270, not 3.27e+03
    return f"{rounded:.{digits}g}"


def glue(key: str, value: float | str | Estimate, digits: int = 4) -> float | int | str:
    """Store ``value`` under ``key`` for ``{glue:text}`key``` in the book; return what was stored.

    Floats are rounded to ``digits`` significant digits first, so that stored outputs compare
    across machines; integers (counts, sizes) and strings are stored as they are; an
    :class:`~noisefit_lib.stats.Estimate` as its text, ``"+0.021 [-0.155, +0.197]"`` (3 digits
    unless ``digits`` is given lower). Works without ``myst_nb`` too (a plain script on a GPU
    machine): then it prints the pair.

    Raises:
        ValueError: a verdict key (see :func:`noisefit_lib.verdicts.is_verdict_key`) with a value
            outside the verdict vocabulary.
    """
    if verdicts.is_verdict_key(key) and not (isinstance(value, str) and verdicts.is_verdict(value)):
        raise ValueError(
            f"{key!r} names a verdict but {value!r} is not one; verdicts are "
            f"{', '.join(verdicts.VERDICTS + verdicts.CHECKS)} or 'not tested (<reason>)'"
        )
    if isinstance(value, Estimate):
        stored = value.text(min(digits, 3))
    elif isinstance(value, str):
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


class Glued(dict):
    """What :func:`glue_all` stored, by key: a dict that a notebook cell does not display.

    The values are already in the prose, so a cell that ends with ``glue_all(...)`` shows
    nothing rather than the raw dict.
    """

    def _ipython_display_(self) -> None:
        """Display nothing."""


def glue_all(values: Mapping[str, Any], digits: int = 4) -> Glued:
    """:func:`glue` every ``key: value`` of ``values``; return what was stored, by key."""
    return Glued({key: glue(key, value, digits) for key, value in values.items()})


def glue_figure(key: str, figure: Any) -> None:
    """Store a matplotlib ``figure`` under ``key`` for a ```{glue:figure}``` directive.

    The caption then lives in the chapter's Markdown, where it can wrap, instead of in a cell's
    metadata line::

        ```{glue:figure} fig-key
        :name: fig-key

        The caption, over as many lines as it needs.
        ```

    Without ``myst_nb`` (a plain script) the figure is shown instead. The figure is closed.
    """
    import matplotlib.pyplot as plt

    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        plt.show()
        return
    myst_glue(key, figure, display=False)
    plt.close(figure)


Rows = Sequence[Mapping[str, Any]] | pd.DataFrame


def table(rows: Rows, digits: int = 4, columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (a DataFrame, or dicts sharing keys), floats to ``digits``.

    Args:
        rows: one dict (or DataFrame row) per row; keys become the header (put units in them).
        digits: significant digits for floats.
        columns: the columns to show, in order (default: all, in order).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict(orient="records")
    if not rows:
        raise ValueError("table() needs at least one row")
    columns = list(columns or rows[0].keys())
    missing = [c for c in columns if any(c not in row for row in rows)]
    if missing:
        raise KeyError(f"rows lack column(s) {missing}")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c], digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def show_table(rows: Rows, digits: int = 4, columns: Sequence[str] | None = None) -> None:
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


def full_column(full: Mapping[str, Any] | None, keys: Sequence[str], prefix: str) -> dict[str, Any]:
    """The ``full`` column of a chapter's comparison table, present or not.

    Args:
        full: the values computed from the committed ``full`` run (keys ``<prefix>_<key>``),
            or None when no ``full`` run is committed.
        keys: the keys of the column, without the prefix (e.g. ``"gain"``, ``"gain_verdict"``).
        prefix: the chapter's prefix for ``full`` values (e.g. ``"crm_full"``).

    Returns:
        ``full`` itself, or, without a run, ``"not run"`` for each value and a ``not tested``
        verdict for each key that names a verdict, so that the prose's glue keys always exist.
    """
    if full is not None:
        return dict(full)
    absent = verdicts.not_tested("no full run committed")
    return {f"{prefix}_{k}": absent if "verdict" in k else "not run" for k in keys}


def carried(
    book: Mapping[str, Any],
    full: Mapping[str, Any] | None,
    keys: Sequence[str],
    *,
    book_prefix: str,
    full_prefix: str,
    to: str,
) -> dict[str, Any]:
    """The values a chapter states in its summary: the ``full`` run's where one is committed.

    A committed longer run carries a chapter's verdicts (book/contributing.md, Results and
    verdicts); the ``book`` run's values stand in only when there is none.

    Returns:
        ``{to}_{key}`` for each key, taken from ``full`` (``{full_prefix}_{key}``) or ``book``
        (``{book_prefix}_{key}``), and ``{to}_run``: the preset that carries them, in backticks.
    """
    source, prefix = (full, full_prefix) if full is not None else (book, book_prefix)
    values = {f"{to}_{k}": source[f"{prefix}_{k}"] for k in keys}
    values[f"{to}_run"] = "`full`" if full is not None else "`book`"
    return values
