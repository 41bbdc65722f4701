"""Write a sweep's tables (CSV, JSON, Markdown) and figures from its run records."""

import json
from pathlib import Path

import pandas as pd

from recbole_beta.experiments import analysis, plots
from recbole_beta.files import write_json


def _pm(mean, std):
    return f"{mean:.4f} ± {std:.4f}"


def _p(value):
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown_tables(summary, sig, buckets, reference, metrics):
    """The results section: a metrics table, the tests against the reference, the buckets."""
    lines = ["| method | seeds | " + " | ".join(m.upper().replace("RECALL", "Recall")
                                                 for m in metrics) + " | epochs | train s |",
             "|---|---|" + "---|" * len(metrics) + "---|---|"]
    for _, row in summary.iterrows():
        cells = [_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        lines.append(f"| {row['label']} | {row['n_seeds']} | " + " | ".join(cells)
                     + f" | {row['epochs_mean']:.0f} | {row['train_seconds_mean']:.1f} |")
    out = ["## Test metrics (mean ± std over seeds)", "", *lines, ""]
    if not sig.empty:
        out += [f"## Paired tests against {reference} (per user, averaged over shared seeds)", "",
                "Δ is the mean per-user difference (method - reference); p_t from the paired t-test, "
                "p_W from the Wilcoxon signed-rank test (scipy.stats); d_z = Δ / sd of the differences; "
                "r = matched-pairs rank-biserial correlation.", "",
                "| method | metric | users | Δ | p_t | d_z | p_W | r |", "|---|---|---|---|---|---|---|---|"]
        for _, row in sig.iterrows():
            out.append(f"| {row['label']} | {row['metric']} | {row['n_users']} | {row['mean_diff']:+.4f} | "
                       f"{_p(row['p_t'])} | {row['d_z']:+.3f} | {_p(row['p_wilcoxon'])} | {row['r_rb']:+.3f} |")
        out.append("")
    if not buckets.empty:
        metric = metrics[0]
        table = buckets.pivot(index="label", columns="bucket_index", values=metric)
        names = buckets.drop_duplicates("bucket_index").set_index("bucket_index")
        header = [f"{names.loc[i, 'bucket']} ({names.loc[i, 'n_users']} users)" for i in table.columns]
        out += [f"## {metric} by training activity |x_u| (users bucketed at activity quantiles)", "",
                "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for label, row in table.reindex(summary["label"]).iterrows():
            out.append(f"| {label} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
        out.append("")
    return "\n".join(out)


def write_report(out_dir, spec=None, figures=True):
    """Aggregate a sweep folder; return the paths written. Reads only files, so it can be rerun."""
    out_dir = Path(out_dir)
    spec_dict = spec.to_dict() if spec is not None else json.loads((out_dir / "spec.json").read_text())
    runs = analysis.load_runs(out_dir)
    ok = [r for r in runs if r["status"] == "ok"]
    failed = [r for r in runs if r["status"] != "ok"]
    summary = analysis.summarize(runs)
    reference = spec_dict.get("reference")
    if reference is None and ok:
        reference = ok[0]["group"]
    sig = analysis.significance(out_dir, runs, reference) if ok else pd.DataFrame()
    buckets = analysis.activity_buckets(out_dir, runs, spec_dict.get("activity_quantiles", [0.25, 0.5, 0.75]))
    # the main three first, then every other metric@k the config names
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean") and "@" in c]

    written = []
    for name, table in (("summary", summary), ("significance", sig), ("activity_buckets", buckets)):
        table.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(out_dir / f"{name}.csv")
    write_json(out_dir / "summary.json", {"spec": spec_dict, "summary": summary.to_dict("records"),
                                          "significance": sig.to_dict("records"),
                                          "activity_buckets": buckets.to_dict("records"),
                                          "failed": [{"run_id": r["run_id"], "error": r["error"]} for r in failed]})
    written.append(out_dir / "summary.json")

    body = [f"# {spec_dict.get('name', 'sweep')}: {spec_dict['dataset']}", "",
            f"{len(ok)} runs finished, {len(failed)} failed; seeds {spec_dict['seeds']}.", ""]
    if ok:
        body.append(markdown_tables(summary, sig, buckets, reference, metrics))
    if failed:
        body += ["## Failed runs", ""] + [f"- `{r['run_id']}`: {r['error'].splitlines()[0]}" for r in failed] + [""]
    if figures and ok:
        figure_dir = out_dir / "figures"
        colors = plots.label_colors(list(summary["label"]))  # one colour per method in every figure
        paths = plots.plot_metric_bars(summary, figure_dir, metrics=tuple(metrics[:3]), colors=colors)
        paths += plots.plot_training_curves([{**r, "label": r["group"]} for r in ok], figure_dir, colors=colors)
        if not buckets.empty:
            paths += plots.plot_activity_buckets(buckets, figure_dir, metric=metrics[0], colors=colors)
        # the strategies' shapes over an illustrative 400 steps; the beta each run really used is in
        # the training curves
        paths += plots.plot_beta_schedules(figure_dir)
        written += paths
        body += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in paths if p.suffix == ".png"] + [""]
    (out_dir / "report.md").write_text("\n".join(body), encoding="utf-8")
    written.append(out_dir / "report.md")
    return written
