"""Tuned sweeps: a hyperparameter search per model and fold, nested inside the sweep, before its runs.

A spec's top-level ``tuning: {algo: random | bayes | exhaustive, max_evals: N, seed: S, config: {...}}`` sets
one budget for every tuned model; a model entry's ``search`` maps config keys to RecBole's params-file
expressions (``choice [...]``, ``uniform a,b``, ``loguniform a,b``, ``quniform a,b,q``) or names a params file.
``tuning.config`` is laid over the trials' config only (an epoch cap, say).

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

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_beta.config import check_values, known_keys
from recbole_beta.errors import ConfigError, RecBoleBetaError
from recbole_beta.experiments.records import portable
from recbole_beta.files import atomic_write, plain, write_json
from recbole_beta.runs.engines import InProcess, Job
from recbole_beta.runs.record import RunRecord, RunStatus, is_ok
from recbole_beta.runs.training import driver_config, train
from recbole_beta.tuning.space import ParamsFileError, SearchSpace, parse_params_line, read_params_file

ALGOS = ("random", "bayes", "exhaustive")
TUNING_FIELDS = ("algo", "max_evals", "seed", "config")
COLUMNS = ["label", "fold", "trial", "params", "valid_score", "chosen", "seconds"]


class TuningSpecError(RecBoleBetaError, ValueError):
    """A spec's ``tuning`` or a model's ``search`` that cannot run (one line); the spec's check raises it as
    its own SpecError."""


class TuningFailed(RecBoleBetaError, RuntimeError):
    """Every trial of a model on a fold failed: there is no point to choose (one line)."""


# ----------------------------------------------------------------------------------------------- the spec

def parse_tuning(raw, spec):
    """The spec's ``tuning`` block and its models' ``search`` entries, checked before any trial (raises
    :class:`TuningSpecError`, one line); None when neither is given. The result (plain data) is kept as
    ``spec.tuning``: ``{algo, max_evals, seed, config, search: {label: {key: expression}}}``."""
    searches = {str(e.get("label", e["model"])): e["search"] for e in raw.get("models") or []
                if isinstance(e, dict) and "search" in e}
    block = raw.get("tuning")
    if block is None:
        if searches:
            label = next(iter(searches))
            raise TuningSpecError(f"models: {label} has a search but the spec has no 'tuning' block: give "
                                  "tuning: {algo: random, max_evals: N, seed: S}")
        return None
    tuning = _tuning_block(block)
    if searches and spec.cells != [{}]:
        raise TuningSpecError("tuning: a tuned sweep has no grid or cells: give each setting its own model entry")
    tuning["search"] = {}
    for label, model, config in spec.models:
        if label in searches:
            space = _space(label, searches[label])
            _check_space(spec, label, model, config, space, tuning)
            tuning["search"][label] = {p.name: " ".join(p.text.split()[1:]) for p in space.params}
    return tuning


def _tuning_block(block):
    if not isinstance(block, dict):
        raise TuningSpecError(f"tuning={block!r} is not allowed: give {{algo: random, max_evals: N, seed: S}}")
    unknown = sorted(set(block) - set(TUNING_FIELDS))
    if unknown:
        raise TuningSpecError(f"tuning: unknown fields {unknown}; allowed: {list(TUNING_FIELDS)}")
    algo = block.get("algo", "random")
    if algo not in ALGOS:
        raise TuningSpecError(f"tuning: algo={algo!r} is not allowed: must be one of {', '.join(ALGOS)}")
    max_evals = block.get("max_evals")
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 1:
        raise TuningSpecError(f"tuning: max_evals={max_evals!r} is not allowed: give an integer >= 1 (the trials "
                              "of each tuned model on each fold)")
    seed = block.get("seed", 2020)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TuningSpecError(f"tuning: seed={seed!r} is not allowed: give an integer >= 0")
    config = block.get("config") or {}
    if not isinstance(config, dict):
        raise TuningSpecError("tuning: config: give a mapping of config keys to values (for the trials only)")
    unknown = sorted(set(config) - known_keys())
    if unknown:
        raise TuningSpecError(f"tuning: config: unknown config keys {unknown}")
    return {"algo": algo, "max_evals": max_evals, "seed": seed, "config": dict(config)}


def _space(label, search):
    """A model's ``search`` (a mapping of key -> expression, or a params file's path) as a SearchSpace."""
    where = f"models: {label}: search"
    try:
        if isinstance(search, str):
            if not Path(search).is_file():
                raise TuningSpecError(f"{where}: {search} is not a params file (give a mapping of config keys to "
                                      "expressions, or a params file's path)")
            return read_params_file(search)
        if not isinstance(search, dict) or not search:
            raise TuningSpecError(f"{where}: the space is empty: give a mapping of config keys to expressions, "
                                  "e.g. {reg_weight: 'choice [100,250,500]'}, or a params file's path")
        params = []
        for key, expression in search.items():
            if not isinstance(expression, str):
                raise TuningSpecError(f"{where}: {key}={expression!r} is not an expression: write it as in a "
                                      "params file, e.g. 'choice [1,2]' or 'loguniform -9.2,-4.6'")
            param = parse_params_line(f"{key} {expression}", f"{where}: {key}")
            if param is None:
                raise TuningSpecError(f"{where}: {key} has an empty expression")
            params.append(param)
        return SearchSpace(params, file=where)
    except ParamsFileError as error:
        raise TuningSpecError(str(error)) from None


def _check_space(spec, label, model, config, space, tuning):
    """What a model's search must be: keys the model reads, none fixed in its config, a grid for exhaustive."""
    where = f"models: {label}: search"
    read = driver_config(model, spec.dataset, spec.config_files, {}).final_config_dict
    for param in space.params:
        if param.name in ("model", "dataset", "seed", "fold"):
            raise TuningSpecError(f"{where}: {param.name} cannot be searched")
        if param.name not in read:
            raise TuningSpecError(f"{where}: {model} does not read {param.name!r}; search keys of its own config")
        if param.name in config:
            raise TuningSpecError(f"{where}: {param.name} is searched and also fixed in the model's config "
                                  f"({param.name}={config[param.name]!r}); drop one of them")
        for value in param.extremes():  # the values the space reaches at its ends, as the model checks them
            value = param.convert(value)
            try:
                check_values({**read, param.name: value}, model)
            except ConfigError as error:
                raise TuningSpecError(f"{where}: {param.name} {' '.join(param.text.split()[1:])} reaches "
                                      f"{param.name}={value!r}, which {model} refuses: {error}") from None
    if tuning["algo"] == "exhaustive" and not space.is_grid():
        bad = next(p for p in space.params if p.distribution != "choice")
        raise TuningSpecError(f"{where}: algo exhaustive searches a grid, so every key must be a 'choice'; "
                              f"{bad.name} is '{bad.distribution}'")


def space_of(tuning, label):
    """The SearchSpace of a tuned label, from ``spec.tuning`` (or spec.json's)."""
    search = tuning["search"][label]
    return SearchSpace([parse_params_line(f"{key} {expression}", label) for key, expression in search.items()],
                       file=label)


# ------------------------------------------------------------------------------------------------- points

def draw_points(space, algo, max_evals, seed):
    """The points of a random or exhaustive search, drawn from ``seed`` up front; for exhaustive, the whole
    grid when it has at most ``max_evals`` points, else ``max_evals`` of them without replacement."""
    rng = np.random.default_rng(seed)
    if algo == "exhaustive":
        grid = [space.convert(point) for point in space.grid()]
        if len(grid) <= max_evals:
            return grid
        return [grid[i] for i in sorted(rng.choice(len(grid), size=max_evals, replace=False))]
    from hyperopt.pyll import stochastic

    hyper = space.hyperopt_space()
    return [space.convert(stochastic.sample(hyper, rng=rng)) for _ in range(max_evals)]


def _same(a, b):
    return json.dumps(plain(a), sort_keys=True) == json.dumps(plain(b), sort_keys=True)


# -------------------------------------------------------------------------------------------------- trials

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
        shared = outcome.record.to_dict()
        shared.pop("test_result", None)  # none was computed: the test users are the study's, not the search's
        record = {**self._record(), **shared, "seconds": round(outcome.seconds, 3)}
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
