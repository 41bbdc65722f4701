"""Figures of a study's results: metrics, paired differences, activity buckets.

Figures for the beta study's results: test metrics, paired differences from the reference method,
activity buckets; and what every figure shares (colours, legends, saving). The figures of training
itself (beta schedules, training curves) are in :mod:`recbole_beta.experiments.training_plots`.

Every ``plot_*`` function writes ``<out_dir>/<stem>.png`` (150 dpi) and ``<out_dir>/<stem>.svg`` and
returns those two paths. Figures are built with :class:`matplotlib.figure.Figure` rather than pyplot,
so nothing touches pyplot's global state or needs a display.

Colours follow :func:`label_colors`: sorted labels onto tab10 (tab20 beyond ten labels). Figures that
show the same set of labels therefore agree; pass the same ``colors`` mapping to every function to
keep them agreeing when the sets differ (e.g. a label whose runs all failed).
"""

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recbole_beta.figures import save_figure


__all__ = [
    "label_colors",
    "plot_metric_bars",
    "plot_paired_differences",
    "plot_activity_buckets",
]



# ----------------------------------------------------------------------------------------------- helpers


def label_colors(labels):
    """A stable colour per label: the sorted unique labels mapped in order onto tab10 (tab20 beyond 10)."""
    unique = sorted({str(label) for label in labels})
    cmap = matplotlib.colormaps["tab10" if len(unique) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(unique)}


def _save(fig, out_dir, stem):
    return save_figure(fig, Path(out_dir) / stem)


def _no_data(ax, text="no data"):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")


def _finite(value):
    """``value`` as a float, or None when it is missing or not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _legend_on_top(ax, ncol, title=None):
    """A one-row legend in headroom added above the data, so it covers no line."""
    top = max((line.get_ydata().max() for line in ax.get_lines()), default=1.0)
    ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)
    ax.legend(loc="upper center", ncol=ncol, fontsize=8, title=title, title_fontsize=8, frameon=False,
              columnspacing=1.0, handlelength=1.5)


def _legend_outside(fig, axes, fontsize=9):
    """One legend for the whole figure, below the panels, from the handles of all ``axes``."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        # as many columns as fit the figure's width: about 0.55 em per character plus the handle
        entry_in = (max(len(label) for label in labels) * 0.55 + 5) * fontsize / 72
        ncol = max(1, min(len(labels), int(fig.get_figwidth() * 0.95 // entry_in)))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, fontsize=fontsize)




def _grouped_bars(ax, table, errors, colors):
    """``table`` as pandas' grouped bar chart: a group of bars per row, a bar per column (a label) in
    each, NaN drawing none; ``errors`` (shaped alike, NaN: none) are the error bars, or None."""
    table.plot.bar(ax=ax, yerr=errors, width=0.8, rot=0, legend=False,
                   color=[colors.get(label, f"C{i}") for i, label in enumerate(table.columns)],
                   capsize=0 if errors is None else 2, error_kw={"elinewidth": 1, "ecolor": "0.2"})
    # pandas draws NaN as a bar of height 0: a label with no value at all stays out of the legend
    for bars, label in zip([c for c in ax.containers if isinstance(c, BarContainer)], table.columns):
        if table[label].isna().all():
            bars.set_label("_nolegend_")
    ax.autoscale(axis="x")  # matplotlib's margins, not pandas' fixed limits
    ax.set_xlabel(None)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_metric_bars(summary, out_dir, metrics=("ndcg@100", "recall@20", "recall@50"), colors=None):
    """Test metrics as a grouped bar chart, one group per metric, one bar per label (file stem ``metrics``).

    Args:
        summary: DataFrame with one row per ``label`` and columns ``<metric>_mean``, ``<metric>_std``
            (error bars: std over seeds; missing or NaN draws none) and ``n_seeds``. Metrics without a
            ``_mean`` column are left out.
        out_dir: folder to write into (created if missing).
        metrics: metrics to draw, in order.
        colors: optional label -> colour mapping; by default :func:`label_colors` of the summary.

    Returns:
        the paths written: ``[png, svg]``.
    """
    summary = pd.DataFrame(summary)
    labels = [str(label) for label in summary["label"]] if "label" in summary else []
    colors = colors or label_colors(labels)
    metrics = [m for m in metrics if f"{m}_mean" in summary]

    fig = Figure(figsize=(max(6.0, 1.2 + len(metrics) * (0.35 * len(labels) + 0.8)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    if labels and metrics:
        by_label = summary.assign(label=labels).set_index("label")
        means = by_label[[f"{m}_mean" for m in metrics]].T.set_axis(metrics).astype(float)
        stds = by_label.reindex(columns=[f"{m}_std" for m in metrics]).T.set_axis(metrics).astype(float)
        _grouped_bars(ax, means, stds, colors)
        seeds = sorted({int(n) for n in summary["n_seeds"].dropna()}) if "n_seeds" in summary else []
        if not seeds:
            seed_text = "seeds"
        elif len(seeds) == 1:
            seed_text = f"{seeds[0]} seed{'s' if seeds[0] != 1 else ''}"
        else:
            seed_text = f"{seeds[0]} to {seeds[-1]} seeds per label"
        ax.set_title(f"Test metrics (mean ± std over {seed_text})", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        _no_data(ax)
    ax.set_ylabel("score")
    return _save(fig, out_dir, "metrics")


# ------------------------------------------------------------------------------------- paired differences

#: reaches (an interval's largest distance from 0) further apart than this factor start a new scale
OFF_SCALE = 5.0


def _interval(sig):
    """(low, high) of each row: its confidence interval, the point where it has none."""
    mean = pd.to_numeric(sig["mean_diff"], errors="coerce").to_numpy(dtype=float)
    low = pd.to_numeric(sig.get("ci_low", pd.Series(np.nan, index=sig.index)), errors="coerce").to_numpy(dtype=float)
    high = pd.to_numeric(sig.get("ci_high", pd.Series(np.nan, index=sig.index)), errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(low), low, mean), np.where(np.isfinite(high), high, mean)


def difference_limits(sig, off_scale=OFF_SCALE):
    """x-limits of one panel of :func:`plot_paired_differences`: 0 and every interval on the common scale.

    An interval's reach is its largest distance from 0. The reaches stay on the scale up to
    ``off_scale`` times their median, and, smallest first, up to the first jump by more than
    ``off_scale`` times once at least half of them are in; the ones beyond (e.g. Pop against a VAE,
    0.2 from 0 where the others are 0.005) are left off, so differences of 0.001 stay readable.
    """
    low, high = _interval(sig)
    reach = np.maximum(np.abs(low), np.abs(high))
    finite = np.isfinite(reach)
    if not finite.any():
        return -1e-3, 1e-3
    ordered = np.sort(reach[finite])
    limit = ordered[-1]
    if np.median(ordered) > 0:
        limit = min(limit, off_scale * np.median(ordered))
    for i in range(max(0, math.ceil(len(ordered) / 2) - 1), len(ordered) - 1):
        if ordered[i] > 0 and ordered[i + 1] > off_scale * ordered[i]:
            limit = min(limit, ordered[i])
            break
    keep = finite & (reach <= limit)
    lo, hi = min(0.0, low[keep].min()), max(0.0, high[keep].max())
    margin = 0.08 * (hi - lo) if hi > lo else 1e-3
    return lo - margin, hi + margin


def plot_paired_differences(sig, out_dir, colors=None, confidence=0.95):
    """Each method's mean per-user difference from the reference, with its confidence interval, per
    metric (file stem ``paired_differences``).

    A point with error bars around a line at 0, one row per method, one panel per metric: the bars of
    :func:`plot_metric_bars` start at 0 and hide differences of 0.001, which this shows. A filled
    point: the Benjamini-Hochberg adjusted p of the run-aware test (``p_run_adj``; ``p_t_adj`` in tables
    without it) is below 0.05. An
    interval far off the panel's scale (see :func:`difference_limits`) is drawn as an arrow at the
    edge with its numbers.

    Args:
        sig: the significance table (:func:`recbole_beta.experiments.analysis.significance`): columns
            ``label``, ``reference``, ``metric``, ``mean_diff``, ``ci_low``, ``ci_high`` (NaN: no
            interval) and optionally ``p_run_adj`` or ``p_t_adj``.
        out_dir: folder to write into (created if missing).
        colors: optional label -> colour mapping; by default :func:`label_colors` of the table.
        confidence: the level of the intervals, for the axis label.

    Returns:
        the paths written: ``[png, svg]``.
    """
    sig = pd.DataFrame(sig)
    if sig.empty or "metric" not in sig or "mean_diff" not in sig:
        fig = Figure(figsize=(6, 3), layout="constrained")
        _no_data(fig.add_subplot(), "no paired tests")
        return _save(fig, out_dir, "paired_differences")
    sig = sig.assign(label=sig["label"].astype(str)).reset_index(drop=True)
    labels = list(dict.fromkeys(sig["label"]))
    metrics = list(dict.fromkeys(sig["metric"]))
    colors = colors or label_colors(labels)
    reference = str(sig["reference"].iloc[0]) if "reference" in sig else "the reference"
    n_cols = min(3, len(metrics))
    n_rows = math.ceil(len(metrics) / n_cols)
    fig = Figure(figsize=(3.8 * n_cols + 1.6, n_rows * (0.42 * len(labels) + 1.3) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, sharey=True, squeeze=False)).ravel()
    y_of = {label: i for i, label in enumerate(labels)}
    for ax, metric in zip(axes, metrics):
        part = sig[sig["metric"] == metric]
        lo_lim, hi_lim = difference_limits(part)
        low, high = _interval(part)
        margin = _finite(part["margin"].iloc[0]) if "margin" in part else None
        if margin is not None:  # the equivalence margin: a band the whole interval must lie in
            lo_lim, hi_lim = min(lo_lim, -1.15 * margin), max(hi_lim, 1.15 * margin)
            ax.axvspan(-margin, margin, color="0.9", zorder=0, label=f"equivalence margin ±{margin:g}")
        ax.axvline(0.0, color="0.3", linewidth=1)
        for (_, row), lo, hi in zip(part.iterrows(), low, high):
            y, color, mean = y_of[row["label"]], colors.get(row["label"]), float(row["mean_diff"])
            p_adj = row.get("p_run_adj", row.get("p_t_adj"))
            filled = _finite(p_adj) is not None and p_adj < 0.05
            face = color if filled else "white"
            if not np.isfinite(mean):
                continue
            if lo_lim <= lo and hi <= hi_lim:
                err = None if lo == hi else [[mean - lo], [hi - mean]]
                ax.errorbar(mean, y, xerr=err, fmt="o", color=color, markerfacecolor=face, markersize=6,
                            capsize=3, elinewidth=1.5)
                continue
            # off the scale: an arrow at the edge it lies beyond, with the numbers
            left = mean < 0
            x = lo_lim + 0.02 * (hi_lim - lo_lim) if left else hi_lim - 0.02 * (hi_lim - lo_lim)
            ax.plot(x, y, marker="<" if left else ">", color=color, markerfacecolor=face, markersize=8)
            ax.annotate(f"off scale: {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]", (x, y), xytext=(6 if left else -6, 7),
                        textcoords="offset points", ha="left" if left else "right", fontsize=7, color="0.25")
        ax.set_xlim(lo_lim, hi_lim)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(f"Δ (method - {reference}), {confidence:.0%} CI", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].set_ylim(len(labels) - 0.5, -0.5)  # the table's order, top to bottom
    band = ("; grey band: equivalence margin, judged on the 90% interval (report)"
            if "margin" in sig and sig["margin"].notna().any() else "")
    sources = " over users and training runs" if "p_run_adj" in sig else ""
    fig.suptitle(f"Mean per-user difference from {reference} with its {confidence:.0%} confidence interval{sources} "
                 f"(filled: Benjamini-Hochberg adjusted p < 0.05{band})", fontsize=10)
    return _save(fig, out_dir, "paired_differences")


# ---------------------------------------------------------------------------------------- activity buckets


def plot_activity_buckets(buckets, out_dir, metric="ndcg@100", colors=None, activity_measure=None):
    """A metric per user-activity bucket, one bar per label (file stem ``activity_buckets``).

    Args:
        buckets: long DataFrame with columns ``label``, ``bucket`` (its name, e.g. ``"[1, 27]"``),
            ``bucket_index`` (the order of the buckets), ``n_users``, one column per metric and
            optionally ``activity_measure`` (what |x_u| counts, for the axis).
        out_dir: folder to write into (created if missing).
        metric: the metric column to draw.
        colors: optional label -> colour mapping; by default :func:`label_colors` of the buckets.
        activity_measure: what |x_u| counts; by default the frame's ``activity_measure``, else
            ``"training interactions |x_u|"`` (the weak protocol's).

    Returns:
        the paths written: ``[png, svg]``.
    """
    buckets = pd.DataFrame(buckets)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if buckets.empty or metric not in buckets or "label" not in buckets:
        _no_data(ax, f"no {metric} per bucket")
        ax.set_ylabel(metric)
        return _save(fig, out_dir, "activity_buckets")

    if activity_measure is None:
        measures = buckets["activity_measure"].dropna().unique() if "activity_measure" in buckets else []
        activity_measure = str(measures[0]) if len(measures) else "training interactions |x_u|"
    buckets = buckets.assign(label=buckets["label"].astype(str))
    labels = sorted(buckets["label"].unique())
    colors = colors or label_colors(labels)
    order = buckets.groupby("bucket_index")["bucket"].first().sort_index()
    ticks = [str(name) for name in order]
    if "n_users" in buckets:
        # the same users fall in a bucket for every model, so any row gives its size
        users = buckets.groupby("bucket_index")["n_users"].max().reindex(order.index)
        ticks = [f"{name}\n{int(n)} users" if pd.notna(n) else name for name, n in zip(ticks, users)]
    table = buckets.pivot_table(index="bucket_index", columns="label", values=metric, aggfunc="mean")
    table = table.reindex(index=order.index, columns=labels).set_axis(ticks)
    _grouped_bars(ax, table, None, colors)
    ax.set_xlabel(f"user activity bucket: {activity_measure}")
    ax.set_ylabel(metric)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Test {metric} per user-activity bucket", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, out_dir, "activity_buckets")
