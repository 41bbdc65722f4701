"""Write a sweep's tables (CSV, JSON, Markdown) and figures from its run records."""

import json
import sys
from pathlib import Path

import pandas as pd
from recbole.evaluator import register

from recbole_beta.experiments import analysis, plots, training_plots
from recbole_beta.experiments.tuned_report import tuning_section
from recbole_beta.experiments.variance import USERS_AND_RUNS
from recbole_beta.errors import RecBoleBetaError
from recbole_beta.files import write_json
from recbole_beta.metrics import register_metrics
from recbole_beta.runs.record import is_ok, protocol_of


class ReportError(RecBoleBetaError, ValueError):
    """A folder that holds no sweep, or runs whose files cannot give the report (one line)."""


def markdown_table(header, rows):
    """A Markdown table (as lines) of cells already formatted as text: pandas' ``to_markdown`` (tabulate),
    with ``disable_numparse`` so that a cell such as ``0.0100`` is written as given, not re-read as a number."""
    return pd.DataFrame(list(rows), columns=header).to_markdown(index=False, disable_numparse=True).splitlines()


def _pm(mean, std):
    return f"{mean:.4f} ± {std:.4f}"


def _p(value):
    if pd.isna(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _ci(low, high):
    return "–" if pd.isna(low) or pd.isna(high) else f"[{low:+.4f}, {high:+.4f}]"


def _activity_text(activity, quantiles):
    """What the bucket section says about activity: its spread, a warning when it barely varies, the cuts."""
    if not activity:
        return []
    measure = activity["measure"]
    lines = [f"{measure[0].upper() + measure[1:]} over {activity['n_users']} users: median {activity['median']:g} "
             f"(IQR {activity['q25']:g} to {activity['q75']:g}), range {activity['min']:g} to {activity['max']:g}; "
             f"IQR / median = {activity['iqr_over_median']:.3f}, coefficient of variation = {activity['cv']:.3f}.", ""]
    if activity["barely_varies"]:
        lines += [f"**Activity barely varies** here (IQR / median or coefficient of variation under "
                  f"{analysis.FLAT_ACTIVITY:g}): a per-user scaled beta is then nearly a constant (gamma |x_u| / mean "
                  "is about gamma for most users), so the scaled strategy is close to a constant beta here, and "
                  "the buckets below have little range of activity to show.", ""]
    quantile_text = ", ".join(f"{q:g}" for q in quantiles)
    lines += [f"Buckets are cut at the quantiles {quantile_text} of |x_u|; a value that several quantiles fall on is "
              f"a bucket of its own, and a bucket under {activity['min_bucket_users']} users is merged into its "
              "smaller neighbour.", ""]
    return lines


def metric_label(metric):
    """``truncatedrecall@20`` as its class is named: ``TruncatedRecall@20`` (RecBole lower-cases results)."""
    name, sep, k = metric.partition("@")
    register_metrics()  # the plugin's metrics (TruncatedRecall): a report is written without a Config
    cls = register.metrics_dict.get(name)
    return f"{cls.__name__ if cls else name}{sep}{k}"


def _margin(value):
    return "–" if pd.isna(value) else f"±{value:g}"


def _verdict_section(sig, reference):
    """The verdict table, from the run-aware intervals: equivalence against the margins, difference after
    adjustment, the minimum detectable effect and the variance components, one row per method x metric."""
    confidence = f"{analysis.CONFIDENCE:.0%}"
    level = f"{1 - 2 * analysis.ALPHA:.0%}"
    out = [f"## Verdicts against {reference} (users and training runs)", "",
           f"Δ is the mean over users of each user's seed-averaged difference (method - {reference}). Its intervals "
           "count both sources of variance: users within a run, and runs (one training seed's model is shared by "
           "all of its fold's users). The components come from each fold's user x seed table (two-way mean "
           "squares, the run variance pooled over folds and clipped at 0), with a t reference on Satterthwaite's "
           "degrees of freedom (df); sd run is the standard deviation of a run's shared effect, sd user that of a "
           "user's seed-averaged difference.", "",
           f"**equivalent**: the {level} interval of Δ lies inside ± the margin (two one-sided tests at "
           f"{analysis.ALPHA:g}); **different**: the two-sided test, Benjamini-Hochberg adjusted over the "
           f"{len(sig)} comparisons of this table, is below {analysis.ALPHA:g}; **inconclusive**: neither. A pair can "
           "be equivalent and still differ significantly: its difference is then real but inside the margin. MDE: "
           f"the smallest true difference the same test detects with {analysis.POWER:.0%} power, from the same "
           "variance. A row marked *users only* had one seed per fold: its training variance is not estimated and "
           "its verdict rests on the users alone.", ""]
    header = ["method", "metric", "users", "seeds", "Δ", f"{confidence} CI of Δ", f"{level} CI of Δ", "margin",
              "p (BH)", "verdict", "MDE", "sd user", "sd run", "df"]
    out += markdown_table(header, (
        [row["label"], metric_label(row["metric"]), f"{row['n_users']}", f"{row['n_seeds']}",
         f"{row['mean_diff']:+.4f}", _ci(row["ci_low"], row["ci_high"]), _ci(row["ci90_low"], row["ci90_high"]),
         _margin(row["margin"]), _p(row["p_run_adj"]),
         f"**{row['verdict']}**" + ("" if row["variance_sources"] == USERS_AND_RUNS else " (users only)"),
         f"{row['mde']:.4f}", f"{row['sd_user']:.4f}", _sd(row["sd_run"]), f"{row['df']:.0f}"]
        for _, row in sig.iterrows()))
    return out + [""]


def _sd(value):
    return "not estimated" if pd.isna(value) else f"{value:.4f}"


def _resampled_section(sig, reference):
    """The corrected resampled t-test over the fold means (each averaged over the fold's seeds)."""
    out = [f"## Corrected resampled t-test against {reference} (fold means)", "",
           "Each run's mean over its test users minus the reference's run on the same fold and seed, averaged over "
           "the fold's seeds (the seeds retrain on the same folds: the folds are the resamples); "
           "t = mean / sqrt((1/J + n_test/n_train) s²) over the J folds, with J - 1 degrees of freedom (Nadeau and "
           "Bengio, 2003), since the folds share training users; p (BH) adjusted over this table.", ""]
    out += markdown_table(["method", "metric", "folds J", "Δ of fold means", "t", "p", "p (BH)"], (
        [row["label"], metric_label(row["metric"]), f"{row['n_runs']}", f"{row['mean_diff_runs']:+.4f}",
         f"{row['t_nb']:+.3f}", _p(row["p_nb"]), _p(row["p_nb_adj"])]
        for _, row in sig.iterrows()))
    return out + [""]


def markdown_tables(summary, sig, buckets, reference, metrics, activity=None, quantiles=(0.25, 0.5, 0.75),
                    bucket_diffs=None):
    """The results section: a metrics table, the tests against the reference, the buckets (and, given
    ``bucket_diffs``, the differences from the reference within each bucket).

    ``activity``: :func:`recbole_beta.experiments.analysis.activity_summary` of the runs, for what the
    bucket section says about |x_u|.
    """
    folds = "n_folds" in summary
    counts = ["n_folds", "n_users"] if folds else []
    header = ["method", "seeds", *(["folds", "users"] if folds else []), *map(metric_label, metrics), "epochs",
              "train s"]
    lines = markdown_table(header, (
        [row["label"], f"{row['n_seeds']}", *(f"{row[c]}" for c in counts),
         *(_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics),
         f"{row['epochs_mean']:.0f}", f"{row['train_seconds_mean']:.1f}"]
        for _, row in summary.iterrows()))
    title = ("## Test metrics over every tested user, folds pooled (mean ± std over seeds; epochs and train s per fold)"
             if folds else "## Test metrics (mean ± std over seeds)")
    out = [title, "", *lines, ""]
    if not sig.empty:
        confidence = f"{analysis.CONFIDENCE:.0%}"
        n_methods, n_metrics = sig["label"].nunique(), sig["metric"].nunique()
        pooled = " (folds pooled: each user from the fold that tested it)" if "n_folds" in sig else ""
        out += _verdict_section(sig, reference)
        out += [f"## Per-user tests against {reference} (secondary: users as if independent){pooled}", "",
                "The paired tests over users of each user's seed-averaged difference leave out the variance the "
                "training runs share within a fold: their intervals are narrower than the run-aware ones above, "
                f"and no verdict rests on them. {confidence} CI and p_t from the paired t-test, p_W from the "
                "Wilcoxon signed-rank test (scipy.stats); d_z = Δ / sd of the differences; r = matched-pairs "
                "rank-biserial correlation; (BH): Benjamini-Hochberg adjusted over the "
                f"{len(sig)} comparisons ({n_methods} methods x {n_metrics} metrics), each test as one family.", ""]
        header = ["method", "metric", "users", "Δ", f"{confidence} CI of Δ (users)", "p_t", "p_t (BH)", "d_z", "p_W",
                  "p_W (BH)", "r", "MDE (users)"]
        out += markdown_table(header, (
            [row["label"], row["metric"], f"{row['n_users']}", f"{row['mean_diff']:+.4f}",
             _ci(row["ci_low_users"], row["ci_high_users"]), _p(row["p_t"]), _p(row["p_t_adj"]),
             f"{row['d_z']:+.3f}", _p(row["p_wilcoxon"]), _p(row["p_wilcoxon_adj"]), f"{row['r_rb']:+.3f}",
             f"{row['mde_users']:.4f}"]
            for _, row in sig.iterrows()))
        out.append("")
        if "p_nb" in sig:
            out += _resampled_section(sig, reference)
    if not buckets.empty:
        metric = next((m for m in metrics if m in buckets), metrics[0])
        table = buckets.pivot(index="label", columns="bucket_index", values=metric)
        names = buckets.drop_duplicates("bucket_index").set_index("bucket_index")
        header = [f"{names.loc[i, 'bucket']} ({names.loc[i, 'n_users']} users)" for i in table.columns]
        measure = (activity or {}).get("measure") or buckets["activity_measure"].iloc[0]
        out += [f"## {metric} by {measure} (users bucketed at activity quantiles)", "",
                *_activity_text(activity, quantiles)]
        out += markdown_table(["method", *header], (
            [label, *(f"{v:.4f}" for v in row)] for label, row in table.reindex(summary["label"]).iterrows()))
        out.append("")
    if bucket_diffs is not None and not bucket_diffs.empty:
        out += _bucket_difference_section(bucket_diffs, reference)
    return "\n".join(out)


def _bucket_difference_section(diffs, reference):
    """Δ against the reference within each activity bucket, with its interval; * where BH-adjusted p < alpha."""
    metric = diffs["metric"].iloc[0]
    names = diffs.drop_duplicates("bucket_index").set_index("bucket_index").sort_index()
    header = [f"{names.loc[i, 'bucket']}" for i in names.index]
    out = [f"## Δ {metric_label(metric)} against {reference} within each activity bucket", "",
           f"Mean per-user difference (method - {reference}) of the bucket's users with its "
           f"{analysis.CONFIDENCE:.0%} interval counting users and training runs (as the verdicts above); * where the "
           f"Benjamini-Hochberg adjusted p (over the {len(diffs)} cells of this table) is below {analysis.ALPHA:g}; "
           "a cell without * is no evidence that the two are alike (few users: wide intervals).", ""]
    rows = []
    for label in dict.fromkeys(diffs["label"]):
        part = diffs[diffs["label"] == label].set_index("bucket_index")
        cells = []
        for i in names.index:
            if i not in part.index:
                cells.append("–")
                continue
            row = part.loc[i]
            star = "*" if row["p_run_adj"] < analysis.ALPHA else ""
            cells.append(f"{row['mean_diff']:+.4f}{star} {_ci(row['ci_low'], row['ci_high'])}")
        rows.append([label, *cells])
    return out + markdown_table(["method", *header], rows) + [""]


def _heldout_folds(runs):
    """The number of folds the runs' users were cut into, as their records say (``protocol``; the config of a
    record written before it); ``?`` when none says."""
    counts = sorted({protocol_of(r).get("heldout_folds") for r in runs} - {None})
    return "/".join(map(str, counts)) or "?"


def write_report(out_dir, spec=None, figures=True):
    """Aggregate a sweep folder; return the paths written. Reads only files, so it can be rerun."""
    out_dir = Path(out_dir)
    if spec is None:
        if not (out_dir / "runs").is_dir():
            raise ReportError(f"{out_dir} is not a sweep folder (no runs/ in it): give the --out of a sweep")
        try:
            spec_dict = json.loads((out_dir / "spec.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ReportError(f"{out_dir / 'spec.json'} cannot be read ({' '.join(str(error).split())[:200]}): "
                              "run the sweep again to rewrite it") from None
    else:
        spec_dict = spec.to_dict()
    problems = []
    runs = analysis.load_runs(out_dir, problems)
    for line in problems:  # one line each, and the report goes on without them
        print(f"skipped damaged run {line}", file=sys.stderr)
    try:
        return _write_report(out_dir, spec_dict, runs, problems, figures)
    except ValueError as error:  # what the runs' files cannot give (a margin's metric, users without ids)
        if isinstance(error, RecBoleBetaError):
            raise
        raise ReportError(f"cannot report on {out_dir}: {' '.join(str(error).split())}") from None


def _tables(out_dir, spec_dict, runs):
    """Every table of the report, computed from the run files: a dict of name -> table (or value)."""
    ok = [r for r in runs if is_ok(r)]
    summary = analysis.summarize(runs, out_dir)
    reference = spec_dict.get("reference")
    if reference is None and ok:
        reference = ok[0]["group"]
    margins = spec_dict.get("equivalence_margin") or {}
    quantiles = spec_dict.get("activity_quantiles", [0.25, 0.5, 0.75])
    buckets = analysis.activity_buckets(out_dir, runs, quantiles)
    # the main ones first, then every other metric@k the config names
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean") and "@" in c]
    # the differences within buckets, on the metric the bucket table shows
    bucket_metric = next((m for m in metrics if m in buckets), None)
    return {
        "summary": summary, "reference": reference, "metrics": metrics, "quantiles": quantiles, "buckets": buckets,
        "significance": analysis.significance(out_dir, runs, reference, margins=margins) if ok else pd.DataFrame(),
        "per_user": analysis.per_user_table(out_dir, runs), "activity": analysis.activity_summary(out_dir, runs),
        "bucket_differences": (analysis.bucket_differences(out_dir, runs, reference, bucket_metric, quantiles)
                               if bucket_metric else pd.DataFrame()),
    }


def _write_tables(out_dir, spec_dict, t, failed):
    """The CSV tables and summary.json; returns their paths."""
    written = []
    for name in ("summary", "significance", "buckets", "bucket_differences", "per_user"):
        path = out_dir / f"{'activity_buckets' if name == 'buckets' else name}.csv"
        t[name].to_csv(path, index=False)
        written.append(path)
    write_json(out_dir / "summary.json", {"spec": spec_dict, "summary": t["summary"].to_dict("records"),
                                          "significance": t["significance"].to_dict("records"),
                                          "activity_buckets": t["buckets"].to_dict("records"),
                                          "activity": t["activity"],
                                          "failed": [{"run_id": r["run_id"], "error": r["error"]} for r in failed]})
    return written + [out_dir / "summary.json"]


def _plan_line(plan):
    """What the report says of the seed plan a spec was run under."""
    margin = plan["margin"]
    margin = (", ".join(f"{metric} ±{m:g}" for metric, m in margin.items()) if isinstance(margin, dict)
              else f"±{margin:g}")
    return (f"Seeds fixed before the runs by the planner (`python -m recbole_beta.experiments plan`) on the pilot "
            f"`{plan['pilot']}`, at margin {margin} and power {plan['power']:g}; never raised after looking at "
            "a verdict.")


def _heading(spec_dict, runs, ok, failed, problems, t):
    """The report's title and the paragraphs before its tables: counts, the plan, the folds."""
    body = [f"# {spec_dict.get('name', 'sweep')}: {spec_dict['dataset']}", "",
            f"{len(ok)} runs finished, {len(failed)} failed"
            + (f", {len(problems)} damaged (left out, listed below)" if problems else "")
            + f"; seeds {spec_dict['seeds']}.", ""]
    if spec_dict.get("plan"):
        body += [_plan_line(spec_dict["plan"]), ""]
    if analysis.has_folds(ok):
        summary, tested = t["summary"], t["per_user"].drop_duplicates("user")
        body += [f"Cross-validated held-out users: folds {sorted({r['fold'] for r in ok})} of "
                 f"{_heldout_folds(ok)}; {len(tested)} users tested, each in one "
                 "fold; a user's metrics are averaged over its fold's seeds (`per_user.csv`).", ""]
        # the folds the sweep's runs test, finished or not: a method without one of them lacks runs
        n_folds = len({r["fold"] for r in runs if r.get("fold") is not None}) or summary["n_folds"].max()
        short = summary[(summary["n_folds"] < n_folds) | (summary["n_users"] < len(tested))]
        if not short.empty:
            body += [f"**Incomplete sweep:** {', '.join(short['label'])} lack runs (a seed without every fold pools "
                     "fewer users: `n_users` is the fewest of any seed); their means cover fewer users than the "
                     "others'. The paired tests pair only the (fold, seed) runs both methods have.", ""]
    return body


def _write_figures(out_dir, ok, t):
    """The report's figures; returns their paths."""
    figure_dir = out_dir / "figures"
    summary, metrics, buckets = t["summary"], t["metrics"], t["buckets"]
    colors = plots.label_colors(list(summary["label"]))  # one colour per method in every figure
    main = [m for m in metrics if m in analysis.MAIN_METRICS] or metrics[:3]
    paths = plots.plot_metric_bars(summary, figure_dir, metrics=tuple(main), colors=colors)
    if not t["significance"].empty:  # the differences the bars cannot show
        paths += plots.plot_paired_differences(t["significance"], figure_dir, colors=colors,
                                               confidence=analysis.CONFIDENCE)
    paths += training_plots.plot_training_curves([{**r, "label": r["group"]} for r in ok], figure_dir, colors=colors)
    if not buckets.empty:
        metric = next((m for m in metrics if m in buckets), metrics[0])
        paths += plots.plot_activity_buckets(buckets, figure_dir, metric=metric, colors=colors,
                                             activity_measure=t["activity"].get("measure"))
    # the strategies' shapes over an illustrative 400 steps; the beta each run really used is in
    # the training curves
    return paths + training_plots.plot_beta_schedules(figure_dir)


def _write_report(out_dir, spec_dict, runs, problems, figures):
    ok = [r for r in runs if is_ok(r)]
    failed = [r for r in runs if not is_ok(r)]
    t = _tables(out_dir, spec_dict, runs)
    written = _write_tables(out_dir, spec_dict, t, failed)
    body = _heading(spec_dict, runs, ok, failed, problems, t)
    if ok:
        body.append(markdown_tables(t["summary"], t["significance"], t["buckets"], t["reference"], t["metrics"],
                                    t["activity"], t["quantiles"], t["bucket_differences"]))
    if failed:
        body += ["## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error'].splitlines()[0]}" for r in failed] + [""]
    if problems:
        body += ["## Files that could not be read", "",
                 f"{len(problems)} damaged runs, left out of every table above (each file and why); running the "
                 "sweep again moves these files aside and redoes exactly these runs.", ""]
        body += [f"- `{line.partition(': ')[0]}`: {line.partition(': ')[2]}" for line in problems] + [""]
    if figures and ok:
        paths = _write_figures(out_dir, ok, t)
        written += paths
        body += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in paths if p.suffix == ".png"] + [""]
    body += tuning_section(out_dir, spec_dict, written if figures else None)  # a tuned sweep's searches
    (out_dir / "report.md").write_text("\n".join(body), encoding="utf-8")
    written.append(out_dir / "report.md")
    return written
