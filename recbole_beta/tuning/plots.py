"""The figure of a search: ``trials.png`` / ``trials.svg``.

It sits in the tuning package rather than beside the study's figures in ``experiments/plots.py``:
``experiments`` is the layer above ``tuning``, so a plot there would make tuning import upwards. It
follows the same conventions: a :class:`matplotlib.figure.Figure` (no pyplot state, no display), PNG
at 150 dpi and SVG, the two paths returned.
"""

import json
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from recbole_beta.figures import save_figure
from recbole_beta.files import plain
from recbole_beta.runs.record import is_ok


def _label(value):
    return value if isinstance(value, str) else json.dumps(plain(value))


def plot_trials(records, space, stem, best=None, bigger=True, metric="valid score", title=None):
    """Valid score per trial with the running best (top), and against each searched parameter (panels).

    Args:
        records: the trial records, in order; those not ``ok`` are crossed on the top panel.
        space: the :class:`~recbole_beta.tuning.space.SearchSpace` (one panel per parameter).
        stem: the files' path without extension.
        best: the best trial's record, starred (None: no star).
        bigger: a bigger valid score is better (for the running best).

    Writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``; returns their paths.
    """
    ok = [r for r in records if is_ok(r)]
    n = len(space.params)
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols + 0.8, 3.2 + 2.6 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[1.3] + [1] * rows)

    ax = fig.add_subplot(grid[0, :])
    trials = [r["trial"] for r in ok]
    scores = [r["best_valid_score"] for r in ok]
    ax.plot(trials, scores, "o", color="tab:blue", label="trial")
    running = np.maximum.accumulate(scores) if bigger else np.minimum.accumulate(scores)
    ax.step(trials, running, where="post", color="tab:orange", label="best so far")
    failed = [r["trial"] for r in records if not is_ok(r)]
    if failed and scores:  # drawn at the worst score, so that they stay inside the axes
        ax.plot(failed, [min(scores) if bigger else max(scores)] * len(failed), "x", color="tab:red",
                label="failed")
    if best is not None:
        ax.plot([best["trial"]], [best["best_valid_score"]], "*", color="tab:red", markersize=14, label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per trial")
    ax.legend(loc="best", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    for i, param in enumerate(space.params):
        pax = fig.add_subplot(grid[1 + i // cols, i % cols])
        xs = [(r.get("params") or {}).get(param.name) for r in ok]
        if param.distribution == "choice":
            # categories, placed by the value the model received (a list is matched by its JSON)
            labels = [_label(param.convert(v)) for v in param.values]
            index = {label: k for k, label in enumerate(labels)}
            xs_plot = [index.get(_label(x), np.nan) for x in xs]
            pax.set_xticks(range(len(labels)))
            pax.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
            pax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs_plot = [np.nan if x is None else float(x) for x in xs]
            low, high = param.values[0], param.values[1]
            margin = 0.05 * (high - low)
            if param.distribution == "loguniform":  # bounds are exponents
                pax.set_xscale("log")
                pax.set_xlim(math.exp(low - margin), math.exp(high + margin))
                pax.xaxis.set_minor_formatter(NullFormatter())
            else:
                pax.set_xlim(low - margin, high + margin)
        pax.plot(xs_plot, scores, "o", color="tab:blue", alpha=0.8)
        if best is not None and best in ok:
            k = ok.index(best)
            pax.plot([xs_plot[k]], [scores[k]], "*", color="tab:red", markersize=12)
        pax.set_title(f"{param.name} ({param.distribution})", fontsize="medium")
        if i % cols == 0:
            pax.set_ylabel(metric)
    return [str(path) for path in save_figure(fig, stem)]
