"""Seeds planned before running: from a finished pilot sweep, the seeds per fold each comparison needs.

The run variance (one training seed's model shared by its fold's users) shrinks only with seeds, so the
number of seeds decides whether a comparison can be called equivalent at all. :func:`plan_seeds` takes
each comparison's variance components from the pilot (:mod:`~recbole_beta.experiments.variance`) and
finds the fewest seeds per fold, with the pilot's folds and users, for which

- *equivalence*: the 90% interval falls inside +-M with the given power when the true difference is 0;
- *difference*: the two-sided test at 0.05 detects a true difference of M with that power;

and the hours those runs would take at the pilot's recorded run times. The seeds are fixed before the
study runs and never raised after looking at a verdict: adding seeds until an interval fits is optional
stopping, which inflates the error rates the verdicts promise.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_beta.errors import RecBoleBetaError
from recbole_beta.experiments import variance
from recbole_beta.experiments.analysis import ALPHA, paired_runs
from recbole_beta.experiments.per_user import load_per_user, load_runs, per_user_metric_names, run_key, user_key
from recbole_beta.runs.record import is_ok


class PlanError(RecBoleBetaError, ValueError):
    """A pilot that cannot be planned from; the message is one line."""


def _run_seconds(members):
    """A run's wall time in the pilot (training and evaluation), as recorded; its training time if older."""
    return float(np.mean([r.get("wall_seconds") or r.get("train_seconds") or np.nan for r in members]))


def _pilot(pilot_dir):
    """The pilot's ok runs, its reference label and its folds; a :class:`PlanError` if it cannot be planned from."""
    pilot_dir = Path(pilot_dir)
    if not (pilot_dir / "runs").is_dir():
        raise PlanError(f"{pilot_dir} is not a sweep folder (no runs/ in it): give a finished sweep as the pilot")
    ok = [r for r in load_runs(pilot_dir) if is_ok(r)]
    if not ok:
        raise PlanError(f"{pilot_dir} holds no finished runs to plan from")
    try:
        reference = json.loads((pilot_dir / "spec.json").read_text(encoding="utf-8")).get("reference")
    except (OSError, ValueError):
        reference = None
    return ok, reference or ok[0]["group"]


def plan_seeds(pilot_dir, margins, power=0.8, labels=None, most=200):
    """One row per comparison (each label against the pilot's reference) and metric of ``margins``
    (metric -> M): the pilot's components, the seeds per fold for equivalence and for detecting M
    (None: ``most`` seeds are not enough, the users' part alone is too wide), and the hours the method's
    runs would take at that number of seeds (every fold, the pilot's run time)."""
    ok, reference = _pilot(pilot_dir)
    margins = {str(m).lower(): float(v) for m, v in margins.items()}
    available = per_user_metric_names(pilot_dir, ok)
    missing = [m for m in margins if m not in available]
    if missing:
        raise PlanError(f"the pilot's per-user tables hold no {', '.join(missing)}; they hold {', '.join(available)}")
    groups = [g for g in dict.fromkeys(r["group"] for r in ok) if g != reference]
    unknown = [label for label in labels or [] if label not in groups]
    if unknown:
        raise PlanError(f"no runs of {', '.join(unknown)} against {reference} in the pilot; it has {', '.join(groups)}")
    key = user_key(pilot_dir, ok)
    tables = {r["run_id"]: load_per_user(pilot_dir, r) for r in ok}
    ref_runs = [r for r in ok if r["group"] == reference]
    rows = []
    for group in [g for g in groups if not labels or g in labels]:
        members = [r for r in ok if r["group"] == group and run_key(r) in {run_key(x) for x in ref_runs}]
        folds = len({r.get("fold") for r in members})
        for metric, margin in margins.items():
            c = variance.components(variance.fold_tables(paired_runs(tables, members, ref_runs, metric, key)))
            if not c.runs_estimated:
                raise PlanError(f"{group}: one seed per fold in the pilot, so its training variance cannot be "
                                "estimated; plan from a pilot with at least 2 seeds per fold")
            row = {"label": group, "reference": reference, "metric": metric, "margin": margin,
                   "pilot_seeds": c.n_seeds, "pilot_mean_diff": c.mean, "sd_user": c.sd_user, "sd_run": c.sd_run,
                   "seeds_equivalence": variance.seeds_needed(c, margin, ALPHA, power, "equivalence", most),
                   "seeds_difference": variance.seeds_needed(c, margin, ALPHA, power, "difference", most),
                   "run_seconds": _run_seconds(members), "folds": folds}
            seeds = max(s for s in (row["seeds_equivalence"], row["seeds_difference"], 0) if s is not None)
            row["hours"] = seeds * folds * row["run_seconds"] / 3600 if seeds else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def format_plan(table, power, most=200):
    """The plan as the command prints it: a line per comparison and metric, then what the whole study needs."""
    lines = [f"seeds per fold for power {power:g} (alpha {ALPHA:g}), with the pilot's folds and users:"]
    for row in table.itertuples():
        def seeds(n):
            return f"more than {most}" if n is None or pd.isna(n) else f"{int(n)}"
        lines.append(f"  {row.label} vs {row.reference}, {row.metric} at margin {row.margin:g}: "
                     f"equivalence {seeds(row.seeds_equivalence)}, difference {seeds(row.seeds_difference)} "
                     f"(pilot: {row.pilot_seeds} seeds, sd run {row.sd_run:.4f}, sd user {row.sd_user:.4f}; "
                     + (f"{row.hours:.1f} h of runs at {row.run_seconds:.0f} s a run)" if row.hours == row.hours
                        else "the users' part alone is wider than the margin allows: more users, not seeds)"))
    needed = [n for n in pd.concat([table["seeds_equivalence"], table["seeds_difference"]]) if not pd.isna(n)]
    if needed:
        lines.append(f"the study: {int(max(needed))} seeds per fold covers every comparison that any number up to "
                     f"{most} can settle; fix it before running and do not raise it after reading a verdict")
    return "\n".join(lines)
