"""A sweep run's files (record and per-user table) and the job that trains a run into them.

Where a run's record (JSON) and per-user table (NPZ) go, how a run is trained into them
(:class:`SweepJob`, for any of :mod:`~recbole_beta.runs.engines`), and how they are judged finished or
unreadable.

A worker writes the run's per-user table and then its record, each atomically, the moment the run ends,
so a driver that is killed loses no finished run, and a rerun skips them. Paths travel absolute
(:func:`portable`): ``--out``, the spec's config files, and a relative ``data_path``.
"""

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from recbole_beta.experiments.per_user import set_aside, unreadable
from recbole_beta.files import atomic_write, plain, write_json
from recbole_beta.runs.engines import Job
from recbole_beta.runs.record import RunRecord, RunStatus, is_ok
from recbole_beta.runs.training import absolute_data_path, driver_config, train


def write_per_user(path, table):
    atomic_write(path, lambda f: np.savez_compressed(f, **{k: np.asarray(v) for k, v in table.items()}), binary=True)


def run_paths(out_dir, run):
    runs = Path(out_dir) / "runs"
    return runs / f"{run.run_id}.json", runs / f"{run.run_id}.per_user.npz"


def is_finished(out_dir, run, notes=None):
    """True when the run's record says it finished and it and its per-user table can be read. A file that cannot be
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
    return is_ok(record) and per_user_path.is_file()


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
    """Train and test one run; return its record (the run's identity, then its
    :class:`~recbole_beta.runs.record.RunRecord`: status, results or error, protocol) and per-user table."""
    record = new_record(run, spec, out_dir, index, overrides)
    config = record["config"]
    try:  # any error is recorded, and the sweep goes on
        outcome = train(run.model, spec.dataset, spec.config_files, config, per_user=True, console_level=console_level)
    finally:
        shutil.rmtree(config["checkpoint_dir"], ignore_errors=True)  # the per-user table holds what the report needs
    record.update(outcome.record.to_dict())
    return record, (outcome.result["per_user"] if outcome.record.ok else None)


def write_run(out_dir, run, record, per_user):
    """Write a run's per-user table (if any), then its record, each atomically: a record marks the run
    finished, so it comes last."""
    record_path, per_user_path = run_paths(out_dir, run)
    if per_user is not None:
        write_per_user(per_user_path, per_user)
    write_json(record_path, record)


def portable(spec, runs):
    """The spec with its config files as absolute paths, and each run's config overrides
    ({run_id: {"data_path": ...}}) for a relative data path, made absolute against this working directory
    as RecBole would have read it here (ml-100k needs none: RecBole reads the copy it ships)."""
    spec = replace(spec, config_files=[os.path.abspath(f) for f in spec.config_files])
    overrides, seen = {}, {}
    for run in runs:
        overrides[run.run_id] = {}
        if spec.dataset == "ml-100k":
            continue
        key = json.dumps([run.model, run.config], sort_keys=True, default=str)
        if key not in seen:
            try:
                seen[key] = absolute_data_path(driver_config(run.model, spec.dataset, spec.config_files, run.config))
            except Exception:  # noqa: BLE001 - the run fails with this error in its worker, and is recorded
                seen[key] = None
        if seen[key] is not None:
            overrides[run.run_id] = {"data_path": seen[key]}
    return spec, overrides


def record_of(out_dir, run):
    """The run's record on disk, or None when there is none that can be read."""
    record_path, _ = run_paths(out_dir, run)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("run_id") == run.run_id else None


class SweepJob(Job):
    """One run of a sweep for an engine: trained by :func:`execute`, its files written by :func:`write_run`.
    Off the driver's process it works in ``<out>/work/<run_id>/``."""

    def __init__(self, run, spec, out_dir, index, overrides=None, console_level=None, isolated=True):
        self.run, self.spec, self.out_dir, self.index = run, spec, Path(out_dir), index
        self.overrides, self.console_level = overrides or {}, console_level
        self.key = f"run {run.run_id}"
        self.plugins = tuple(spec.plugins)
        self.folder = str(self.out_dir / "work" / run.run_id) if isolated else None

    def work(self, gpu_id=None, driver_writes=False):
        overrides = self.overrides if gpu_id is None else {**self.overrides, "gpu_id": gpu_id}
        record, per_user = execute(self.run, self.spec, self.out_dir, self.index, overrides, self.console_level)
        try:
            write_run(self.out_dir, self.run, record, per_user)
        except OSError:
            if not driver_writes:
                raise
        return (record, per_user) if driver_writes else record

    def stamp(self):
        """Which file is at the run's record path now (an atomic write puts a new one there), or None."""
        try:
            stat = run_paths(self.out_dir, self.run)[0].stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def written(self, stamp):
        return record_of(self.out_dir, self.run) if self.stamp() != stamp else None

    def returned(self, value):
        record, per_user = value
        on_disk = record_of(self.out_dir, self.run)
        if on_disk is None or on_disk != json.loads(json.dumps(plain(record))):
            write_run(self.out_dir, self.run, record, per_user)  # written on another node: here too
        return record

    def lost(self, error, details=""):
        record = new_record(self.run, self.spec, self.out_dir, self.index, self.overrides)
        record.update(RunRecord(RunStatus.FAILED, error=error, traceback=details).to_dict())
        write_run(self.out_dir, self.run, record, None)
        return record
