"""Tuned sweeps: a hyperparameter search per model and fold, nested inside the sweep, before its runs.

The spec's ``tuning`` block and its models' ``search`` entries are read and checked in
:mod:`recbole_beta.experiments.tuning_spec`; here the searches run, and the values they choose go to
the runs. ``tuning.config`` is laid over the trials' config only (an epoch cap, say).

For each tuned model and each fold (the one split without ``folds``), ``max_evals`` trials train on the
fold's training users and are scored on its validation users (``valid_metric``: the best validation score
of the trial); the test users are never evaluated (``run_recbole_beta(test=False)``) and no trial file holds
a test metric. The search's own early stop is off. The chosen point (the best validation score; ties to the
earliest trial) is then run with every seed of the spec as an ordinary sweep run, its config holding the
chosen values. A model without ``search`` runs at its config.

Random and exhaustive searches draw their points from the seed up front (an exhaustive grid larger than the
budget: ``max_evals`` of its points drawn without replacement; smaller: the whole grid) and run them as jobs
of the sweep's engine (``--jobs``); a bayes search is hyperopt's TPE through RecBole's HyperTuning, one trial
after another, a trial already on disk replayed (hyperopt proposes the same points from the same seed and
history). The points are the same on every fold (drawn from the one seed), and a raised budget keeps the
trials it has. Each trial's record is written atomically the moment it ends (``tuning/<label>__<digest>/``, the
digest of what decides the trials, so a changed search starts afresh); a rerun reads finished trials back and
redoes none. ``tuning.csv``: one row per trial, ``label, fold, trial, params, valid_score, chosen, seconds``.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from recbole_beta.errors import RecBoleBetaError
from recbole_beta.experiments.records import portable
from recbole_beta.experiments.tuning_spec import draw_points, space_of
from recbole_beta.files import atomic_write, plain, write_json
from recbole_beta.runs.engines import InProcess, Job
from recbole_beta.runs.record import RunRecord, RunStatus, is_ok
from recbole_beta.runs.training import train

COLUMNS = ["label", "fold", "trial", "params", "valid_score", "chosen", "seconds"]


class TuningFailed(RecBoleBetaError, RuntimeError):
    """Every trial of a model on a fold failed: there is no point to choose (one line)."""


# -------------------------------------------------------------------------------------------------- trials

def _same(a, b):
    return json.dumps(plain(a), sort_keys=True) == json.dumps(plain(b), sort_keys=True)


@dataclass(frozen=True)
class Trial:
    """What one trial trains: a model at a config (the search's base and the point's values), on a fold, with
    the search's seed; ``run_id`` as a sweep's Run has one (what ``records.portable`` keys its overrides by)."""

    label: str
    model: str
    seed: int
    config: dict
    fold: int = None

    @property
    def run_id(self):
        return hashlib.sha1(json.dumps([self.label, self.model, self.config, self.seed, self.fold], sort_keys=True,
                                       default=str).encode()).hexdigest()

class Search:
    """One model's search on one fold: its trials' folder and the Run each trial trains as."""

    def __init__(self, spec, label, fold, out_dir):
        self.spec, self.label, self.fold = spec, label, fold
        tuning = spec.tuning
        _, self.model, config = next(m for m in spec.models if m[0] == label)
        self.space = space_of(tuning, label)
        self.base = {**spec.config, **config, **tuning["config"]}
        # a random or bayes search's first n points do not depend on max_evals: a budget raised keeps its trials
        budget = tuning["max_evals"] if tuning["algo"] == "exhaustive" else None
        decides = [self.model, spec.dataset, self.base, tuning["algo"], budget, tuning["seed"], tuning["search"][label]]
        digest = hashlib.sha1(json.dumps(decides, sort_keys=True, default=str).encode()).hexdigest()[:8]
        self.base.update({"fold": fold} if fold is not None else {})  # one folder per model, one below per fold
        slug = re.sub(r"[^A-Za-z0-9_.=,@+-]+", "_", label)
        self.folder = Path(out_dir) / "tuning" / f"{slug}__{digest}" / ("all" if fold is None else f"fold{fold}")

    def run_of(self, params):
        return Trial(label=self.label, model=self.model, seed=self.spec.tuning["seed"],
                     config={**self.base, **params}, fold=self.fold)

    def path(self, number):
        return self.folder / f"trial{number:04d}.json"

    def finished(self, number, params=None):
        """The trial's record on disk if it finished (and, given ``params``, tried them), else None."""
        try:
            record = json.loads(self.path(number).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not is_ok(record):
            return None
        return record if params is None or _same(record.get("params"), params) else None

    def records(self):
        out = []
        for number in range(1, self.spec.tuning["max_evals"] + 1):
            try:
                out.append(json.loads(self.path(number).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out


class TrialJob(Job):
    """One trial of a tuned sweep for an engine: trained and validated (never tested), its record written
    atomically at ``search.path(number)``."""

    def __init__(self, search, number, params, overrides=None, console_level=None, isolated=False):
        self.search, self.number, self.params = search, number, params
        self.overrides, self.console_level = overrides or {}, console_level
        self.key = f"trial {search.label} fold {search.fold} #{number}"
        self.plugins = tuple(search.spec.plugins or ())
        self.folder = str(search.folder / f"work{number:04d}") if isolated else None

    def _record(self):
        run = self.search.run_of(self.params)
        return {"label": run.label, "model": run.model, "fold": run.fold, "trial": self.number,
                "params": plain(self.params), "seed": run.seed, "config": plain(run.config)}

    def work(self, gpu_id=None, driver_writes=False):
        run, search = self.search.run_of(self.params), self.search
        scratch = search.folder / f"scratch{self.number:04d}"
        config = {**run.config, **self.overrides, **({"gpu_id": gpu_id} if gpu_id is not None else {}),
                  "seed": run.seed, "results_dir": None, "checkpoint_dir": str(scratch), "show_progress": False}
        try:
            outcome = train(run.model, search.spec.dataset, search.spec.config_files, config, saved=False,
                            test=False, console_level=self.console_level)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # test=False: no test_result, no per-user file; the test users are the study's, not the search's
        record = {**self._record(), **outcome.record.to_dict(), "seconds": round(outcome.seconds, 3)}
        search.folder.mkdir(parents=True, exist_ok=True)
        write_json(search.path(self.number), record)
        return record

    def stamp(self):
        try:
            stat = self.search.path(self.number).stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def written(self, stamp):
        if self.stamp() == stamp:
            return None
        try:
            return json.loads(self.search.path(self.number).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def returned(self, value):
        if self.written(None) != json.loads(json.dumps(plain(value))):
            write_json(self.search.path(self.number), value)
        return value

    def lost(self, error, details=""):
        record = {**self._record(), **RunRecord(RunStatus.FAILED, error=error, traceback=details).to_dict()}
        self.search.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.search.path(self.number), record)
        return record


# -------------------------------------------------------------------------------------------- the driver

def tuned_runs(spec, out_dir, engine, progress=True, console_level=None):
    """The spec's runs, after every search not yet finished has run on ``engine`` (an Engine of
    :mod:`recbole_beta.runs.engines`) and ``tuning.csv`` is written: a tuned model's runs with the values
    chosen on their fold. An untuned spec's runs as they are."""
    runs = spec.runs()
    if not spec.tuning or not spec.tuning["search"]:
        return runs
    spec = portable(spec, [])[0]  # config files absolute: trials may run in folders of their own
    searches = [Search(spec, label, fold, Path(out_dir).resolve())
                for fold in (spec.folds if spec.folds is not None else [None]) for label in spec.tuning["search"]]
    _run_searches(spec, searches, engine, progress, console_level)
    chosen = write_tuning_csv(searches, Path(out_dir) / "tuning.csv")
    for search in searches:
        if (search.label, search.fold) not in chosen:
            records = search.records()
            first = next((r.get("error") for r in records if r.get("error")), "?")
            raise TuningFailed(f"tuning: every trial of {search.label}" + (f" on fold {search.fold}" if search.fold
                               is not None else "") + f" failed ({len(records)} trials); the first: {first}")
    runs = [replace(run, config={**run.config, **chosen[(run.label, run.fold)]["params"]})
            if (run.label, run.fold) in chosen else run for run in runs]
    set_aside_superseded(out_dir, runs, set(spec.tuning["search"]))
    return runs


def set_aside_superseded(out_dir, runs, labels):
    """Move aside (``<file>.superseded``) the finished runs of tuned ``labels`` that ``runs`` no longer hold:
    the same label, fold and seed at a point no longer chosen (a raised budget found a better one), which the
    report would otherwise pool with the run at the chosen point. Return the records' paths moved."""
    ids = {run.run_id for run in runs}
    keys = {(run.label, run.fold, run.seed) for run in runs if run.label in labels}
    moved = []
    for path in sorted((Path(out_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the sweep's own check names it
        if (isinstance(record, dict) and record.get("run_id") not in ids
                and (record.get("label"), record.get("fold"), record.get("seed")) in keys):
            for file in (path, path.with_name(f"{record.get('run_id')}.per_user.npz")):
                if file.exists():
                    os.replace(file, file.with_name(file.name + ".superseded"))
            moved.append(path)
    return moved


def _run_searches(spec, searches, engine, progress, console_level):
    tuning = spec.tuning
    runner = engine.runner()
    isolated = not isinstance(runner, InProcess)
    overrides = portable(spec, [s.run_of({}) for s in searches])[1]

    def job(search, number, params):
        return TrialJob(search, number, params, overrides.get(search.run_of({}).run_id), console_level, isolated)

    plans = {id(s): (None if tuning["algo"] == "bayes" else
                     draw_points(s.space, tuning["algo"], tuning["max_evals"], tuning["seed"])) for s in searches}
    total = sum(tuning["max_evals"] if plans[id(s)] is None else len(plans[id(s)]) for s in searches)
    jobs = [job(s, n, p) for s in searches if plans[id(s)] is not None
            for n, p in enumerate(plans[id(s)], start=1) if s.finished(n, p) is None]
    done = sum(len(plans[id(s)]) for s in searches if plans[id(s)] is not None) - len(jobs)
    bar = tqdm(total=total, initial=done, desc=f"{spec.name} tuning", unit="trial", disable=not progress,
               dynamic_ncols=True)

    def ended(job, record):
        if not is_ok(record):
            bar.write(f"{job.key} failed: {str(record.get('error')).splitlines()[0]}")
        bar.update(1)

    with bar:
        if jobs:
            runner.run(jobs, ended)
        for search in searches:
            if plans[id(search)] is None:
                _bayes(search, runner, job, ended, bar)


def _bayes(search, runner, job, ended, bar):
    """hyperopt's TPE through RecBole's HyperTuning (the plugin's, its early stop off), seeded; a trial
    already finished with the proposed point is read back, not run."""
    from recbole_beta.tuning.hyperopt_engine import PluginHyperTuning, _TrialFailed
    from recbole_beta.tuning.trials import Patience

    tuning, count = search.spec.tuning, [0]

    def objective(config_dict, _files):
        count[0] += 1
        params = search.space.convert(config_dict)
        record = search.finished(count[0], params)
        if record is None:
            got = []
            runner.run([job(search, count[0], params)], lambda j, r: (got.append(r), ended(j, r)))
            record = got[0]
        else:
            bar.update(1)
        if not is_ok(record):
            raise _TrialFailed(record.get("error"))
        return {"model": search.model, "best_valid_score": record["best_valid_score"],
                "valid_score_bigger": record["valid_score_bigger"],
                "best_valid_result": record.get("best_valid_result") or {}, "test_result": {}}

    hyper = PluginHyperTuning(objective, search.space, "bayes", tuning["max_evals"], Patience(0),
                              seed=tuning["seed"])
    with contextlib.redirect_stdout(io.StringIO()):  # HyperTuning prints every point
        hyper.run()


def choose(records):
    """The chosen trial among ``records``: the best validation score of those that finished, ties to the
    earliest trial; None when none finished."""
    best = None
    for record in sorted(records, key=lambda r: r["trial"]):
        score = record.get("best_valid_score")
        if not is_ok(record) or score is None or not math.isfinite(score):
            continue
        bigger = record.get("valid_score_bigger", True)
        if best is None or (score > best["best_valid_score"] if bigger else score < best["best_valid_score"]):
            best = record
    return best


def write_tuning_csv(searches, path):
    """``tuning.csv``: one row per trial (label, fold, trial, params as JSON, valid_score, chosen, seconds),
    atomically; return {(label, fold): chosen record}."""
    rows, chosen = [], {}
    for search in searches:
        records = sorted(search.records(), key=lambda r: r["trial"])
        best = choose(records)
        if best is not None:
            chosen[(search.label, search.fold)] = best
        rows += [{"label": search.label, "fold": search.fold, "trial": r["trial"],
                  "params": json.dumps(plain(r.get("params")), sort_keys=True),
                  "valid_score": r.get("best_valid_score") if is_ok(r) else None,
                  "chosen": best is not None and r["trial"] == best["trial"], "seconds": r.get("seconds")}
                 for r in records]
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write(path, lambda f: table.to_csv(f, index=False))
    return chosen
