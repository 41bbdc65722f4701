"""Experiments: sweeps over models, settings, seeds and folds; their analysis and report.

Experiments that answer the research question: sweeps of models and settings over seeds,
per-user metrics and significance tests, activity buckets, tables and figures.

    python -m recbole_beta.experiments run SPEC.yaml --out results/NAME
    python -m recbole_beta.experiments report results/NAME
"""
