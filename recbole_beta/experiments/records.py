"""A sweep run's files: its record (JSON) and per-user table (NPZ), where they go, how a run is executed
into them, and how a run's files are judged finished or unreadable. Used by the sequential sweep
(:mod:`~recbole_beta.experiments.runner`) and its workers elsewhere (:mod:`~recbole_beta.experiments.parallel`)
alike, so neither imports the other."""

import json
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from recbole_beta.experiments.per_user import set_aside, unreadable
from recbole_beta.files import atomic_write, write_json
from recbole_beta.quick_start import run_recbole_beta


def write_per_user(path, table):
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: np.asarray(v) for k, v in table.items()}), binary=True)


def run_paths(out_dir, run):
    runs = Path(out_dir) / "runs"
    return runs / f"{run.run_id}.json", runs / f"{run.run_id}.per_user.npz"


def is_finished(out_dir, run, notes=None):
    """True when the run's record says ok and it and its per-user table can be read. A file that cannot be
    read (a crash or a full disk cut it short) is moved aside, named in ``notes``, and the run is redone."""
    record_path, per_user_path = run_paths(out_dir, run)
    if not record_path.is_file():
        return False
    for path in (record_path, per_user_path):
        if not path.is_file():
            continue
        reason = unreadable(path)
        if reason is not None:
            moved = set_aside(path)
            if notes is not None:
                notes.append(f"{path} cannot be read ({reason}): moved to {moved.name}; the run is redone")
            return False
    record = json.loads(record_path.read_text(encoding="utf-8"))
    return record.get("status") == "ok" and per_user_path.is_file()


def new_record(run, spec, out_dir, index=0, overrides=None):
    """What every record of ``run`` holds before it runs, its config included (``overrides`` above the
    run's own keys: what a worker elsewhere needs, e.g. an absolute data path or the GPUs Ray gave it)."""
    checkpoints = Path(out_dir) / "checkpoints" / run.run_id
    config = {
        **run.config,
        **(overrides or {}),
        "seed": run.seed,
        "results_dir": None,  # the sweep writes its own record
        "checkpoint_dir": str(checkpoints),
        "show_progress": False,
    }
    record = {"run_id": run.run_id, "index": index, "label": run.label, "group": run.group, "model": run.model,
              "seed": run.seed, "cell": run.cell, "config": config, "dataset": spec.dataset}
    if run.fold is not None:
        record["fold"] = run.fold
    return record


def execute(run, spec, out_dir, index=0, overrides=None, console_level=None):
    """Train and test one run; return its record (status ok or failed) and per-user table."""
    record = new_record(run, spec, out_dir, index, overrides)
    config = record["config"]
    checkpoints = Path(config["checkpoint_dir"])
    start = time.time()
    try:
        result = run_recbole_beta(run.model, spec.dataset, config_file_list=spec.config_files or None,
                                  config_dict=dict(config), per_user=True, console_level=console_level)
    except Exception as error:  # recorded, and the sweep goes on
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      wall_seconds=time.time() - start)
        return record, None
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)  # the per-user table holds what the report needs
    record.update(
        status="ok",
        # what |x_u| in the per-user table counts depends on it (the config files may set it)
        eval_protocol=(result.get("config") or {}).get("eval_protocol") or config.get("eval_protocol") or "weak",
        best_valid_score=result["best_valid_score"],
        best_valid_result=dict(result["best_valid_result"] or {}),
        test_result=dict(result["test_result"]),
        history=result["history"],
        **({"protocol_users": result["protocol_users"]} if result.get("protocol_users") else {}),
        train_seconds=result["train_seconds"],
        wall_seconds=time.time() - start,
    )
    return record, result["per_user"]


def write_run(out_dir, run, record, per_user):
    """Write a run's per-user table (if any), then its record, each atomically: a record marks the run
    finished, so it comes last."""
    record_path, per_user_path = run_paths(out_dir, run)
    if per_user is not None:
        write_per_user(per_user_path, per_user)
    write_json(record_path, record)
