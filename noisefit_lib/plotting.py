"""The book's one figure style: colour-blind-safe colours, a fixed method-to-style map.

Importing this module changes nothing; call :func:`use_house_style` once in a chapter's setup
cell, or use :func:`house_style` as a context manager.

Explained in: book/contributing.md (Figures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import matplotlib as mpl

# Okabe-Ito colours, in the book's order: readable by colour-blind readers and, paired with a
# line style or marker each, in grey.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

# One fixed look per method across the whole book: SFT is always black and solid, NoiseFiT
# always orange and dashed, and so on. Chapters add no private styles for these names.
METHOD_STYLE: dict[str, dict[str, Any]] = {
    name: {"color": OKABE_ITO[i], "linestyle": LINESTYLES[i], "marker": MARKERS[i]}
    for i, name in enumerate(
        ("sft", "noisefit", "neftune", "rdrop", "random-layers", "all-layers", "isotropic")
    )
}

HOUSE_RC: dict[str, Any] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "axes.prop_cycle": mpl.cycler(color=list(OKABE_ITO)),
    "image.cmap": "viridis",
    "svg.hashsalt": "noisefit",  # deterministic SVG if someone saves one
}


def style(index: int) -> dict[str, Any]:
    """Colour, line style and marker for the ``index``-th series of a figure."""
    i = index % len(OKABE_ITO)
    return {"color": OKABE_ITO[i], "linestyle": LINESTYLES[i], "marker": MARKERS[i]}


def method_style(method: str) -> dict[str, Any]:
    """The fixed style of a named method (``sft``, ``noisefit``, ...)."""
    if method not in METHOD_STYLE:
        raise ValueError(f"no house style for method {method!r}; known: {', '.join(METHOD_STYLE)}")
    return dict(METHOD_STYLE[method])


def use_house_style() -> None:
    """Apply the house style to every later figure, and keep inline figures as PNG."""
    mpl.rcParams.update(HOUSE_RC)
    with contextlib.suppress(ImportError, AttributeError):
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")  # SVG output differs byte for byte between runs


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """Context-manager form of :func:`use_house_style` that restores the previous style."""
    with mpl.rc_context(HOUSE_RC):
        yield
