"""A sweep folder's records and per-user tables, read back and pooled per user.

A sweep folder's run records and per-user tables, read back: which runs, which users (one id for the whole
sweep), which metrics, and each user's metrics averaged over seeds (folds pooled)."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

#: the metrics every table shows first (others the config names follow), and the ones the paired
#: tests run on by default, those of them the per-user tables hold: RecBole's NDCG and Recall, and
#: the paper's Recall (TruncatedRecall; RecBole lower-cases metric names)
MAIN_METRICS = ("ndcg@100", "recall@20", "recall@50", "truncatedrecall@20", "truncatedrecall@50")

#: the columns of a per-user table that are not metrics (``user_token``: the dataset's own user id,
#: the same in every fold; older tables have RecBole's internal ``user_id`` only)
USER_COLUMNS = ("user_id", "activity", "user_token")


def unreadable(path):
    """Why a run's file cannot be read (a JSON record, or a per-user table: a zip of arrays), or None."""
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or "run_id" not in record:
                return "not a run record"
        else:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # every member's CRC
            if bad is not None:
                return f"{bad} is corrupt"
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        return " ".join(str(error).split())[:200] or type(error).__name__
    return None


def set_aside(path):
    """Move an unreadable file out of the sweep's way (``<name>.unreadable``, numbered if taken); return it."""
    target = path.with_name(path.name + ".unreadable")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.unreadable{n}")
    os.replace(path, target)
    return target


def load_runs(out_dir, problems=None):
    """Every run record of a sweep folder, in the spec's order (model, cell, seed).

    A record that cannot be read is left out, and an ok record whose per-user table cannot be read is
    marked ``status: unreadable``; each is named, with why, in ``problems`` (a list), so a report says what
    it skipped instead of failing on it (the next sweep moves such files aside and redoes the runs).
    """
    records = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        reason = unreadable(path)
        if reason is not None:
            if problems is not None:
                problems.append(f"{path}: cannot be read ({reason})")
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") == "ok":
            table = Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz"
            reason = unreadable(table)
            if reason is not None:
                record.update(status="unreadable", error=f"{table.name} cannot be read: {reason}")
                if problems is not None:
                    problems.append(f"{table}: cannot be read ({reason})")
        records.append(record)
    return sorted(records, key=lambda r: (r.get("index", 0), r["run_id"]))


def load_per_user(out_dir, record):
    with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
        return pd.DataFrame({k: data[k] for k in data.files})


def user_key(out_dir, runs):
    """The column that names a user across the ok ``runs``, the same for every table of the sweep: the
    dataset's own id (``user_token``) when every table has it, else RecBole's internal ``user_id`` (tables
    written before ``user_token`` existed; without folds every run numbers the users alike). A fold sweep
    needs the tokens: RecBole renumbers users with each fold."""
    ok = [r for r in runs if r["status"] == "ok"]
    with_tokens = []
    for r in ok:
        with np.load(Path(out_dir) / "runs" / f"{r['run_id']}.per_user.npz") as data:
            with_tokens.append("user_token" in data.files)
    if all(with_tokens):
        return "user_token"
    if has_folds(ok):
        missing = next(r["run_id"] for r, has in zip(ok, with_tokens) if not has)
        raise ValueError(f"{missing}.per_user.npz has no user_token, which a fold sweep pairs users by (RecBole "
                         "renumbers users with each fold): rerun that run (delete its record)")
    return "user_id"


def run_key(record):
    """(fold, seed) of a run: what two methods' runs are paired on (fold None without folds)."""
    return record.get("fold"), record["seed"]


def has_folds(runs):
    return any(r.get("fold") is not None for r in runs)


def main_first(names):
    """Metric names, the main ones first, the others in the order given."""
    names = list(dict.fromkeys(names))
    return [m for m in MAIN_METRICS if m in names] + [m for m in names if m not in MAIN_METRICS]


def per_user_metric_names(out_dir, runs):
    """The per-user metric columns any ok run's table holds, the main ones first."""
    names = []
    for record in runs:
        if record["status"] == "ok":
            with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
                names += [k for k in data.files if k not in USER_COLUMNS]
    return main_first(names)


def metric_names(runs):
    """The test metrics the runs report, the main ones first."""
    names = []
    for record in runs:
        for name in (record.get("test_result") or {}):
            if name not in names:
                names.append(name)
    return main_first(names)


def per_user_table(out_dir, runs, metrics=None):
    """Every evaluated user, one row per group: its test metrics averaged over seeds (under folds, the
    seeds of the fold that tested it), its activity and fold."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return pd.DataFrame()
    metrics = metrics or per_user_metric_names(out_dir, ok)
    key = user_key(out_dir, ok)
    frames = []
    for r in ok:
        table = load_per_user(out_dir, r)
        frames.append(pd.DataFrame({"label": r["group"], "user": table[key].astype(str), "fold": r.get("fold"),
                                    "seed": r["seed"], "activity": table["activity"],
                                    **{m: table[m] if m in table else np.nan for m in metrics}}))
    rows = pd.concat(frames, ignore_index=True)
    order = {g: i for i, g in enumerate(dict.fromkeys(r["group"] for r in ok))}
    table = (rows.groupby(["label", "user"], sort=False)
             .agg(fold=("fold", "first"), n_seeds=("seed", "nunique"), activity=("activity", "mean"),
                  **{m: (m, "mean") for m in metrics})
             .reset_index())
    table["_order"] = table["label"].map(order)
    if not has_folds(ok):
        table = table.drop(columns="fold")
    return table.sort_values(["_order", "user"], kind="stable").drop(columns="_order").reset_index(drop=True)
