"""The report's "Tuning" section of a tuned sweep, and its figure of the best validation score per trial.

For a tuned sweep (:mod:`recbole_beta.experiments.tuned`): each model's space and budget, the values chosen on
each fold (and how often each value was chosen), the untuned models, and a figure of the best validation
score reached against the number of trials, beside its expected maximum after n trials (Dodge et al., "Show
Your Work", EMNLP 2019), so a reader sees whether the budget was enough.

Reads ``tuning.csv`` and the spec (as ``spec.json`` holds it) only."""

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recbole_beta.experiments.plots import _save
from recbole_beta.tuning.space import SearchSpace, parse_params_line

#: RecBole's metrics where smaller is better (its valid_metric_bigger is then False)
SMALLER = ("rmse", "mae", "logloss")


def expected_max(scores, n, bigger=True):
    """The expected best of ``n`` trials drawn with replacement from the ``N`` trial scores ``scores`` (Dodge
    et al. 2019): ``sum_i v_(i) [(i/N)^n - ((i-1)/N)^n]`` over the scores sorted ascending; with
    ``bigger=False`` the expected minimum."""
    v = np.sort(np.asarray(scores, dtype=float))
    if not bigger:
        return -expected_max(-v, n)
    big_n = len(v)
    i = np.arange(1, big_n + 1)
    return float(np.sum(v * ((i / big_n) ** n - ((i - 1) / big_n) ** n)))


def _bigger(spec_dict):
    config = spec_dict.get("config") or {}
    if config.get("valid_metric_bigger") is not None:
        return bool(config["valid_metric_bigger"])
    return str(config.get("valid_metric", "")).split("@")[0].lower() not in SMALLER


def _budget(tuning, search):
    algo, max_evals = tuning["algo"], tuning["max_evals"]
    if algo != "exhaustive":
        return f"{max_evals} trials ({algo})"
    space = SearchSpace([parse_params_line(f"{k} {e}", k) for k, e in search.items()])
    size = space.grid_size()
    if size <= max_evals:
        return f"the whole grid: {size} points (fewer than max_evals={max_evals})"
    return f"{max_evals} of the grid's {size} points, drawn at random"


def _fold_name(fold):
    return "the split" if pd.isna(fold) else f"fold {int(fold)}"


def _value(value):
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)


def _chosen_text(params):
    return ", ".join(f"{k}={_value(v)}" for k, v in params.items())


def _model_rows(table, tuning, searches):
    rows = []
    for label, search in searches.items():
        trials = table[table["label"] == label]
        chosen = trials[trials["chosen"]]
        per_fold = "; ".join(f"{_fold_name(r.fold)}: {_chosen_text(json.loads(r.params))}"
                             for r in chosen.itertuples())
        space = ", ".join(f"`{k} {e}`" for k, e in search.items())
        rows.append(f"| {label} | {space} | {_budget(tuning, search)} | "
                    f"{int(trials['valid_score'].notna().sum())}/{len(trials)} | {per_fold or '-'} |")
    return rows


def _counts(table, searches):
    """How often each value of each searched key was chosen, over the folds."""
    lines = []
    for label in searches:
        chosen = [json.loads(p) for p in table[(table["label"] == label) & table["chosen"]]["params"]]
        for key in searches[label]:
            counts = Counter(_value(c.get(key)) for c in chosen)
            text = ", ".join(f"{value} ({count}/{len(chosen)})" for value, count in counts.most_common())
            lines.append(f"- {label} `{key}`: {text}")
    return lines


def tuning_section(out_dir, spec_dict, written=None):
    """The report's lines on the sweep's tuning ([] for an untuned sweep); with ``written`` (a list), the
    figure is drawn and its paths appended to it."""
    tuning = spec_dict.get("tuning")
    path = Path(out_dir) / "tuning.csv"
    if not tuning or not path.is_file():
        return []
    table = pd.read_csv(path)
    table["chosen"] = table["chosen"].astype(str).str.lower() == "true"
    searches = {m["label"]: m["search"] for m in spec_dict["models"] if m.get("search")}
    untuned = [m["label"] for m in spec_dict["models"] if not m.get("search")]
    metric = (spec_dict.get("config") or {}).get("valid_metric", "the validation metric")
    extra = f" Trials ran with `{json.dumps(tuning['config'])}` over the runs' config." if tuning.get("config") else ""
    body = ["## Tuning", "",
            f"A {tuning['algo']} search per tuned model and fold, one budget for every model (max_evals "
            f"{tuning['max_evals']}, seed {tuning['seed']}), the search's own early stop off. Each trial trained on "
            f"its fold's training users and was scored by {metric} on its validation users only; the test users "
            "were never evaluated. The chosen point (the best validation score, ties to the earliest trial) was "
            f"then run with every seed, as the tables above show. Every trial: `tuning.csv`.{extra}", "",
            "| model | space | budget per fold | trials finished (all folds) | chosen |", "|---|---|---|---|---|",
            *_model_rows(table, tuning, searches), ""]
    if untuned:
        body += [f"Untuned (run at their config): {', '.join(untuned)}.", ""]
    body += ["How often each value was chosen, over the folds:", "", *_counts(table, searches), ""]
    if written is not None and not table.empty:
        paths = plot_tuning_curves(table, Path(out_dir) / "figures", _bigger(spec_dict), metric)
        written += paths
        body += ["Best validation score after n trials (thin: each fold in trial order; thick: the expected "
                 "maximum of n trials drawn from the fold's trials, averaged over the folds). A curve still "
                 "rising at the budget says more trials would have found better points.", "",
                 f"![{paths[0].stem}](figures/{paths[0].name})", ""]
    return body


def plot_tuning_curves(table, out_dir, bigger=True, metric="validation score"):
    """One panel per tuned model: the best validation score reached after n trials on each fold, and the
    expected best of n trials averaged over the folds; PNG and SVG, their paths returned."""
    labels = list(dict.fromkeys(table["label"]))
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), constrained_layout=True)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    best = np.fmax.accumulate if bigger else np.fmin.accumulate
    for ax, label in zip(axes, labels):
        trials = table[table["label"] == label]
        expected = []
        for fold, group in itertools.groupby(trials.itertuples(), key=lambda r: _fold_name(r.fold)):  # NaN: no fold
            scores = np.array([r.valid_score for r in sorted(group, key=lambda r: r.trial)], dtype=float)
            if not np.isfinite(scores).any():
                continue
            reached = best(np.where(np.isfinite(scores), scores, -np.inf if bigger else np.inf))
            ax.step(np.arange(1, len(scores) + 1), reached, where="post", lw=0.9, alpha=0.6, label=fold)
            finished = scores[np.isfinite(scores)]
            expected.append([expected_max(finished, n, bigger) for n in range(1, len(scores) + 1)])
        if expected:
            width = min(len(e) for e in expected)
            mean = np.mean([e[:width] for e in expected], axis=0)
            ax.plot(np.arange(1, width + 1), mean, color="black", lw=2, marker="o", ms=3, label="expected max")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("trials")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"best {metric}")
        ax.legend(fontsize=7)
    for ax in axes[len(labels):]:
        ax.set_visible(False)
    return _save(fig, out_dir, "tuning_curves")
