"""Run a sweep: every run of a spec, each written to disk the moment it ends.

One run after another in this process, or several at once in local processes or on Ray (any engine of
:mod:`recbole_beta.runs.engines`, each run a :class:`~recbole_beta.experiments.records.SweepJob`): the
same records, and the same guarantees.

Finished runs are skipped when the sweep is run again, so an interrupted sweep loses nothing;
a run that fails is recorded with its error and the sweep goes on. It is retried next time, and
its record replaced; a failed record of a run the spec now configures differently (same label,
cell and seed, another config) is dropped, so a fixed spec leaves no stale failure behind.
"""

import hashlib
import itertools
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from recbole_beta.errors import RecBoleBetaError
from recbole_beta.experiments.records import SweepJob, is_finished, portable
from recbole_beta.experiments.tuned import tuned_runs
from recbole_beta.files import ensure_writable, write_json
from recbole_beta.runs.engines import Engine, InProcess
from recbole_beta.runs.record import is_ok


class SweepBusyError(RecBoleBetaError, RuntimeError):
    """Another sweep holds the folder."""


def config_file_digests(spec):
    """The sha1 of each of the spec's config files: a run's id holds the spec's settings, not these files'
    content, so spec.json keeps their digests and a resume compares them."""
    return {str(file): hashlib.sha1(Path(file).read_bytes()).hexdigest() for file in spec.config_files or []}


def config_files_note(out_dir, digests):
    """One warning line when a config file changed since the sweep's finished runs or trials were trained with
    it (None otherwise). They are kept, as a rerun after a failure fixed in a config file wants (the failed
    runs are redone): but the reader is told, and how to retrain them."""
    try:
        before = json.loads((out_dir / "spec.json").read_text(encoding="utf-8")).get("config_file_sha1") or {}
    except (OSError, ValueError, AttributeError):
        return None
    changed = sorted(file for file, digest in digests.items() if before.get(file, digest) != digest)
    kept = sum(map(_is_ok_file, itertools.chain((out_dir / "runs").glob("*.json"),
                                                (out_dir / "tuning").glob("*/*/trial*.json"))))
    if not changed or not kept:
        return None
    return (f"recbole-beta: warning: {', '.join(changed)} changed since this sweep's {kept} finished runs and "
            "trials were trained with it; they are kept (a run is known by the spec's settings, not by the files' "
            "content): to retrain them, delete them or give another --out")


def _is_ok_file(path):
    """Whether ``path`` holds a finished run's or trial's record (failed ones are redone anyway: a config file
    fixed after a failure is what a rerun is for)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and is_ok(record)  # a damaged one is the sweep's own check's to name


class SweepLock:
    """One sweep at a time on a folder: ``filelock``'s lock on ``<out>/.sweep.lock`` (an OS lock, which the
    operating system releases when the holder exits, killed or not: no stale lock is left behind). Who holds
    it is written beside it, in ``<out>/.sweep.holder``, for the one-line refusal of a second sweep."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / ".sweep.lock"
        self.holder = Path(out_dir) / ".sweep.holder"
        self.lock = FileLock(self.path, timeout=0)

    def __enter__(self):
        try:
            self.lock.acquire()
        except Timeout:
            try:
                holder = self.holder.read_text(encoding="utf-8").strip()
            except OSError:
                holder = ""
            raise SweepBusyError(f"another sweep is running on {self.path.parent} ({holder or 'another process'}); "
                                 "wait for it to end or stop it, or give another --out") from None
        try:
            self.holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}, started "
                                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}", encoding="utf-8")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


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
        if not isinstance(record, dict):  # not a record: is_finished sets it aside
            continue
        if (not is_ok(record) and record.get("run_id") not in ids
                and _run_key(record.get("label"), record.get("cell"), record.get("seed"), record.get("fold")) in keys):
            path.unlink()
            removed.append(path)
    return removed


def run_sweep(spec, out_dir, progress=True, jobs=1, engine="local", cpus=None, ray_address=None, cpus_per_run=None,
              gpus_per_run=None, console_level=None):
    """Run what is not yet finished (failed runs included); return (number run now, number failed now).

    By default one run after another in this process. ``jobs`` > 1: that many runs at once, each in a
    local process of its own; ``engine="ray"``: each run a Ray task, on a local instance of ``cpus`` CPUs
    or the cluster at ``ray_address``, reserving ``cpus_per_run`` CPUs (default 1) and ``gpus_per_run``
    GPUs (default 0). See :mod:`recbole_beta.runs.engines`; the records are the same.
    ``console_level``: of every run's RecBole console log (the CLI keeps it at WARNING under its bar).
    """
    engine = Engine.checked(engine=engine, jobs=jobs, cpus=cpus, address=ray_address, cpus_per_run=cpus_per_run,
                            gpus_per_run=gpus_per_run)  # EngineError before anything is written
    out_dir = Path(out_dir)
    ensure_writable(out_dir, "--out")
    with SweepLock(out_dir):
        return _run_locked(spec, out_dir, progress, engine, console_level)


def _run_locked(spec, out_dir, progress, engine, console_level):
    digests = config_file_digests(spec)
    note = config_files_note(out_dir, digests)
    if note:
        print(note, file=sys.stderr)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "spec.json", {**spec.to_dict(), **({"config_file_sha1": digests} if digests else {})})
    runs = tuned_runs(spec, out_dir, engine, progress, console_level)  # a tuned model's: its chosen values
    drop_superseded_failures(out_dir, runs)
    notes = []
    todo = [(i, run) for i, run in enumerate(runs) if not is_finished(out_dir, run, notes)]
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=spec.name, unit="run", disable=not progress,
               dynamic_ncols=True)
    for note in notes:
        bar.write(note, file=sys.stderr)
    runner = engine.runner()
    isolated = not isinstance(runner, InProcess)  # off this process, each run in a folder of its own
    overrides, where = {}, out_dir
    if isolated:  # paths travel absolute
        spec, overrides = portable(spec, [run for _, run in todo])
        where = out_dir.resolve()
    jobs = [SweepJob(run, spec, where, index, overrides.get(run.run_id), console_level, isolated=isolated)
            for index, run in todo]
    failed = 0

    def started(job):
        # one run at a time here: the bar says which
        bar.set_postfix_str(f"{job.run.label} seed {job.run.seed}" + (f", {failed} failed" if failed else ""))

    def ended(job, record):
        nonlocal failed
        if not is_ok(record):
            failed += 1
            bar.write(f"run {job.run.run_id} failed: {record['error'].splitlines()[0]}")
            bar.set_postfix_str(f"{failed} failed", refresh=False)
        bar.update(1)

    with bar:
        if jobs:
            runner.run(jobs, ended, started if not isolated else None)
    try:
        (out_dir / "checkpoints").rmdir()  # each run removed its own; leave no empty folder
    except OSError:
        pass
    return len(todo), failed
