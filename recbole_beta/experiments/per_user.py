"""A sweep folder's records and per-user tables, read back and pooled per user.

A sweep folder's run records and per-user tables, read back: which runs, which users (one id for the whole
sweep), which metrics, and each user's metrics averaged over seeds (folds pooled)."""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_beta.runs.record import is_ok

#: the metrics every table shows first (others the config names follow), and the ones the paired
#: tests run on by default, those of them the per-user tables hold: RecBole's NDCG and Recall, and
#: the paper's Recall (TruncatedRecall; RecBole lower-cases metric names)
MAIN_METRICS = ("ndcg@100", "recall@20", "recall@50", "truncatedrecall@20", "truncatedrecall@50")

#: the columns of a per-user table that are not metrics (``user_token``: the dataset's own user id,
#: the same in every fold; older tables have RecBole's internal ``user_id`` only)
USER_COLUMNS = ("user_id", "activity", "user_token")


#: what the report reads from every run record, from a finished one, and from one that failed
RECORD_KEYS = ("run_id", "status")
OK_RECORD_KEYS = ("group", "seed", "model", "cell", "test_result", "history", "train_seconds")
FAILED_RECORD_KEYS = ("error",)


def _json_reason(error, text):
    """What a JSON error says about the file: cut short (a crash, a full disk) or something else."""
    if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
        return "truncated JSON"
    return f"not JSON ({error.msg}: line {error.lineno} column {error.colno})"


def _record_reason(text):
    """Why the text of a run record cannot serve a report or a rerun, or None."""
    if not text.strip():
        return "empty file"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return _json_reason(error, text)
    if not isinstance(record, dict) or "run_id" not in record:
        return "not a run record"
    needed = RECORD_KEYS + (OK_RECORD_KEYS if is_ok(record) else FAILED_RECORD_KEYS)
    missing = [key for key in needed if key not in record]
    return f"a run record without {', '.join(missing)}" if missing else None


def _table_reason(path):
    """Why a per-user table (a zip of equally long 1-d arrays, ``activity`` and a user id among them) cannot
    be read, or None. Each array is read: a sound zip of something else is no table either."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # every member's CRC
    except zipfile.BadZipFile:
        return "not a zip archive (cut short or overwritten)"
    if bad is not None:
        return f"{bad} is corrupt"
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if any(not isinstance(a, np.ndarray) or a.ndim != 1 for a in arrays.values()):
        return "not a per-user table (a member is no 1-d array)"
    missing = [c for c in ("activity",) if c not in arrays]
    if not {"user_id", "user_token"} & set(arrays):
        missing.append("user_id")
    if missing:
        return f"a per-user table without {', '.join(missing)}"
    if len({len(a) for a in arrays.values()}) > 1:
        return "a per-user table whose columns differ in length"
    return None


def unreadable(path):
    """Why a run's file cannot be used (a JSON record, or a per-user table), or None."""
    try:
        if path.suffix == ".json":
            return _record_reason(path.read_text(encoding="utf-8"))
        return _table_reason(path)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # unreadable; an array numpy cannot read
        return " ".join(str(error).split())[:200] or type(error).__name__


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

    A damaged run is left out: a record that cannot be read, or an ok record whose per-user table cannot
    be; each is named, ``runs/<file>: why``, in ``problems`` (a list), so a report says what it skipped
    instead of failing on it (the next sweep moves such files aside and redoes exactly those runs).
    """
    records = []
    runs = Path(out_dir) / "runs"
    for path in sorted(runs.glob("*.json")):
        reason = unreadable(path)
        if reason is None:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not is_ok(record):
                records.append(record)
                continue
            path = runs / f"{record['run_id']}.per_user.npz"
            reason = unreadable(path)
            if reason is None:
                records.append(record)
                continue
        if problems is not None:
            problems.append(f"runs/{path.name}: {reason}")
    return sorted(records, key=lambda r: (r.get("index", 0), r["run_id"]))


def load_per_user(out_dir, record):
    with np.load(Path(out_dir) / "runs" / f"{record['run_id']}.per_user.npz") as data:
        return pd.DataFrame({k: data[k] for k in data.files})


def user_key(out_dir, runs):
    """The column that names a user across the ok ``runs``, the same for every table of the sweep: the
    dataset's own id (``user_token``) when every table has it, else RecBole's internal ``user_id`` (tables
    written before ``user_token`` existed; without folds every run numbers the users alike). A fold sweep
    needs the tokens: RecBole renumbers users with each fold."""
    ok = [r for r in runs if is_ok(r)]
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
        if is_ok(record):
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
    ok = [r for r in runs if is_ok(r)]
    if not ok:  # the columns still: a caller picks a label's rows (no shared seed left when runs are damaged)
        return pd.DataFrame(columns=["label", "user", "n_seeds", "activity", *(metrics or [])])
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
