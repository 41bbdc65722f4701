"""Saving a figure: the one way every figure of the plugin is written (sweeps' reports, tuning's trials)."""

from pathlib import Path

import matplotlib

#: the PNGs' resolution
DPI = 150


def save_figure(fig, stem):
    """Write ``fig`` as ``<stem>.png`` (:data:`DPI`) and ``<stem>.svg``; return the two paths.

    The SVG holds no date and no random ids (matplotlib's ``svg.hashsalt`` fixed to the file's name), so
    drawing the same data again gives the same file, and a committed figure changes only when its data do.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    fig.savefig(png, dpi=DPI)
    with matplotlib.rc_context({"svg.hashsalt": stem.name}):
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]
