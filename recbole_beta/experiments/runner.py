"""Run a sweep: every run of a spec, each written to disk the moment it ends.

One run after another in this process, or several at once in local processes or on Ray
(:mod:`recbole_beta.experiments.parallel`): the same records, and the same guarantees.

Finished runs are skipped when the sweep is run again, so an interrupted sweep loses nothing;
a run that fails is recorded with its error and the sweep goes on. It is retried next time, and
its record replaced; a failed record of a run the spec now configures differently (same label,
cell and seed, another config) is dropped, so a fixed spec leaves no stale failure behind.
"""

import fcntl
import json
import os
import shutil
import socket
import sys
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recbole_beta.errors import RecBoleBetaError
from recbole_beta.files import atomic_write, ensure_writable, write_json
from recbole_beta.quick_start import run_recbole_beta


class SweepBusyError(RecBoleBetaError, RuntimeError):
    """Another sweep holds the folder."""


def write_per_user(path, table):
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: np.asarray(v) for k, v in table.items()}), binary=True)


def run_paths(out_dir, run):
    runs = Path(out_dir) / "runs"
    return runs / f"{run.run_id}.json", runs / f"{run.run_id}.per_user.npz"


def unreadable(path):
    """Why a run's file cannot be read (a JSON record, or a per-user table: a zip of arrays), or None."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
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


class SweepLock:
    """One sweep at a time on a folder: an exclusive ``flock`` on ``<out>/.sweep.lock``, which the operating
    system releases when the holder exits, killed or not (so no stale lock is left behind)."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / ".sweep.lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise SweepBusyError(f"another sweep is running on {self.path.parent} ({holder}); wait for it to end or "
                                 "stop it, or give another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()  # releases the lock
        return False


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


def execute(run, spec, out_dir, index=0, overrides=None):
    """Train and test one run; return its record (status ok or failed) and per-user table."""
    record = new_record(run, spec, out_dir, index, overrides)
    config = record["config"]
    checkpoints = Path(config["checkpoint_dir"])
    start = time.time()
    try:
        result = run_recbole_beta(run.model, spec.dataset, config_file_list=spec.config_files or None,
                                  config_dict=dict(config), per_user=True)
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


def _run_key(label, cell, seed, fold=None):
    return label, json.dumps(cell or {}, sort_keys=True, default=str), seed, fold


def drop_superseded_failures(out_dir, runs):
    """Remove failed records of runs that ``runs`` now configure differently: the same label, cell and
    seed under another run id (the spec was fixed). Return the paths removed."""
    ids = {run.run_id for run in runs}
    keys = {_run_key(run.label, run.cell, run.seed, run.fold) for run in runs}
    removed = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (record.get("status") != "ok" and record.get("run_id") not in ids
                and _run_key(record.get("label"), record.get("cell"), record.get("seed"), record.get("fold")) in keys):
            path.unlink()
            removed.append(path)
    return removed


def run_sweep(spec, out_dir, progress=True, jobs=1, engine="local", cpus=None, ray_address=None, cpus_per_run=None,
              gpus_per_run=None):
    """Run what is not yet finished (failed runs included); return (number run now, number failed now).

    By default one run after another in this process. ``jobs`` > 1: that many runs at once, each in a
    local process of its own; ``engine="ray"``: each run a Ray task, on a local instance of ``cpus`` CPUs
    or the cluster at ``ray_address``, reserving ``cpus_per_run`` CPUs (default 1) and ``gpus_per_run``
    GPUs (default 0). See :mod:`recbole_beta.experiments.parallel`; the records are the same.
    """
    workers = None
    if (jobs, engine, cpus, ray_address, cpus_per_run, gpus_per_run) != (1, "local", None, None, None, None):
        from recbole_beta.experiments.parallel import Workers

        workers = Workers.checked(engine=engine, jobs=jobs, cpus=cpus, address=ray_address,
                                  cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)  # EngineError first
        if workers.sequential:
            workers = None
    out_dir = Path(out_dir)
    ensure_writable(out_dir, "--out")
    with SweepLock(out_dir):
        return _run_locked(spec, out_dir, progress, workers)


def _run_locked(spec, out_dir, progress, workers):
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "spec.json", spec.to_dict())
    runs = spec.runs()
    drop_superseded_failures(out_dir, runs)
    notes = []
    todo = [(i, run) for i, run in enumerate(runs) if not is_finished(out_dir, run, notes)]
    failed = 0
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=spec.name, unit="run", disable=not progress,
               dynamic_ncols=True)
    for note in notes:
        bar.write(note, file=sys.stderr)
    with bar:
        if workers is not None:
            if todo:
                failed = workers.run(todo, spec, out_dir, bar)
        else:
            for index, run in todo:
                bar.set_postfix_str(f"{run.label} seed {run.seed}" + (f", {failed} failed" if failed else ""))
                record, per_user = execute(run, spec, out_dir, index)
                write_run(out_dir, run, record, per_user)
                if record["status"] != "ok":
                    failed += 1
                    bar.write(f"run {run.run_id} failed: {record['error'].splitlines()[0]}")
                bar.update(1)
    try:
        (out_dir / "checkpoints").rmdir()  # each run removed its own; leave no empty folder
    except OSError:
        pass
    return len(todo), failed
