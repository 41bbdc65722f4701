"""Hyperparameter search for the plugin's models and RecBole's: hyperopt through RecBole's HyperTuning, or Ray Tune.

    python run_hyper.py --model=ScaledBetaMultVAE --algo=bayes --max_evals=30
    python run_hyper.py --model=MultiVAE --params_file=my.hyper --engine=ray --cpus=8

A search is one model on one dataset. Its space is a RecBole params file (``properties/hyper/<Model>.hyper``
by default), one line per key::

    learning_rate loguniform -9.2,-4.6        # exp(-9.2) .. exp(-4.6): 1e-4 .. 1e-2
    dropout_prob uniform 0.2,0.7
    n_cycles quniform 1,8,1                   # integers 1 .. 8
    mlp_hidden_size choice ['[600]','[600,200]']

Every trial is :func:`recbole_beta.quick_start.run_recbole_beta` with the fixed settings (config files and
``fixed``) below the trial's parameters, so plugin models, the plugin's Config and its safe checkpoints are
used on both engines. The file is read and every value it can produce is checked against the model before
any trial runs; a bad file fails with one line ``<file>:<line>: <problem>``.

Results, in ``output_dir``, the same for both engines:

- ``trials.jsonl``: one JSON line per finished trial (parameters, status, valid and test metrics, seconds),
  rewritten atomically (temporary file, then rename) after each trial;
- ``trials.csv``: the same as a table, written at the end;
- ``best.json``: the trial with the best valid score, its parameters and valid and test metrics;
- ``trials.png`` / ``trials.svg``: the valid score per trial with the running best, and against each
  searched parameter.
"""

import argparse
import ast
import csv
import difflib
import importlib.util
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from recbole.config import Config as RecBoleConfig
from recbole.trainer import HyperTuning
from recbole.utils import get_local_time

from recbole_beta.files import atomic_write, plain, write_text
from recbole_beta.config import Config, known_keys, properties_dir, unknown_key_warnings
from recbole_beta.errors import ConfigError, RecBoleBetaError, TrainingDivergedError
from recbole_beta.registry import get_model

__all__ = [
    "ALGOS",
    "DISTRIBUTIONS",
    "ENGINES",
    "ParamsFileError",
    "SearchParam",
    "SearchSpace",
    "TuningError",
    "default_params_file",
    "main",
    "read_params_file",
    "run_search",
]

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform")
ALGOS = ("exhaustive", "random", "bayes")
ENGINES = ("hyperopt", "ray")
KEEP_CHECKPOINTS = ("best", "all", "none")

#: errors of one trial that do not stop the search: the trial is recorded as failed
TRIAL_ERRORS = (ConfigError, TrainingDivergedError)


class TuningError(RecBoleBetaError, ValueError):
    """A search that cannot run (bad options, no trial finished); the message is one line."""


class ParamsFileError(TuningError):
    """A params file that cannot be searched; the message is ``<file>:<line>: <problem>``."""


class _TrialFailed(Exception):
    """Raised by the hyperopt objective once a failed trial is recorded."""


# ------------------------------------------------------------------------------------------ the space


@dataclass(frozen=True)
class SearchParam:
    """One line of a params file.

    ``values`` holds the choice's values (as written: strings stay strings), ``(low, high)`` for
    ``uniform`` and ``loguniform`` (exponents, as RecBole and hyperopt take them), ``(low, high, q)``
    for ``quniform``.
    """

    name: str
    distribution: str
    values: tuple
    line: int = 0
    text: str = ""

    @property
    def integer(self):
        """A ``quniform`` on integers (bounds and step): its values are given to the model as ints."""
        return self.distribution == "quniform" and all(float(v).is_integer() for v in self.values)

    def hyperopt(self):
        from hyperopt import hp

        if self.distribution == "choice":
            return hp.choice(self.name, list(self.values))
        if self.distribution == "uniform":
            return hp.uniform(self.name, *self.values)
        if self.distribution == "loguniform":
            return hp.loguniform(self.name, *self.values)
        return hp.quniform(self.name, *self.values)

    def ray(self, grid=False):
        from ray import tune

        if self.distribution == "choice":
            return tune.grid_search(list(self.values)) if grid else tune.choice(list(self.values))
        if self.distribution == "uniform":
            return tune.uniform(*self.values)
        if self.distribution == "loguniform":
            low, high = self.values
            return tune.loguniform(math.exp(low), math.exp(high))
        return tune.quniform(*self.values)

    def convert(self, value):
        """A sampled value as the config receives it: numpy to Python, integer quniform to int,
        strings through RecBole's own conversion (``'[600,200]'`` -> ``[600, 200]``, ``'True'`` -> True)."""
        if isinstance(value, np.generic):
            value = value.item()
        if self.integer and isinstance(value, (int, float)):
            return int(round(value))
        if isinstance(value, str):
            return RecBoleConfig._convert_config_dict(None, {self.name: value})[self.name]
        return value

    def extremes(self):
        """The values the distribution can reach at its ends (every value of a choice)."""
        if self.distribution == "choice":
            return list(self.values)
        if self.distribution == "uniform":
            return list(self.values)
        if self.distribution == "loguniform":
            return [math.exp(v) for v in self.values]
        low, high, q = self.values
        return [round(low / q) * q, round(high / q) * q]


@dataclass
class SearchSpace:
    """The searched keys, in file order."""

    params: list
    file: str = "<params>"

    @property
    def names(self):
        return [p.name for p in self.params]

    def __getitem__(self, name):
        return next(p for p in self.params if p.name == name)

    def location(self, param):
        return f"{self.file}:{param.line}" if param.line else self.file

    def is_grid(self):
        return all(p.distribution == "choice" for p in self.params)

    def grid_size(self):
        return int(np.prod([len(p.values) for p in self.params]))

    def require_grid(self):
        for param in self.params:
            if param.distribution != "choice":
                raise ParamsFileError(
                    f"{self.location(param)}: --algo exhaustive searches a grid, so every line must be "
                    f"'choice'; {param.name} is '{param.distribution}' (use --algo random or bayes)"
                )

    def hyperopt_space(self):
        return {p.name: p.hyperopt() for p in self.params}

    def ray_space(self, grid=False):
        return {p.name: p.ray(grid=grid) for p in self.params}

    def convert(self, sampled):
        """Sampled values (hyperopt's or Ray's) as the config receives them, in file order."""
        return {p.name: p.convert(sampled[p.name]) for p in self.params if p.name in sampled}

    def to_dict(self):
        return {"file": self.file, "params": [{"name": p.name, "distribution": p.distribution,
                                                "values": list(p.values), "line": p.line} for p in self.params]}


def _numbers(text, count, where, name, distribution, example):
    parts = text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise ParamsFileError(
            f"{where}: {name} {distribution} needs {count} comma-separated numbers "
            f"({example}), not {text!r}"
        )
    return numbers


def parse_params_line(text, where):
    """One line of a params file as a :class:`SearchParam` (None for blank and ``#`` comment lines).

    The line is split as RecBole's ``HyperTuning`` splits it: ``<key> <distribution> <values>``, the
    values' spaces removed.
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = stripped.split()
    if len(tokens) < 3:
        raise ParamsFileError(
            f"{where}: expected '<key> <distribution> <values>', e.g. 'learning_rate loguniform -9.2,-4.6', "
            f"not {stripped!r}"
        )
    name, distribution, value = tokens[0], tokens[1], "".join(tokens[2:])
    if distribution not in DISTRIBUTIONS:
        close = difflib.get_close_matches(distribution, DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParamsFileError(
            f"{where}: unknown distribution {distribution!r} for {name}{hint}; "
            f"use {', '.join(DISTRIBUTIONS[:-1])} or {DISTRIBUTIONS[-1]}"
        )
    if distribution == "choice":
        try:
            values = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values = None
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamsFileError(
                f"{where}: {name} choice needs a non-empty list of Python literals, e.g. "
                f"choice [0.1,0.5] or choice ['[600]','[600,200]'], not {value!r}"
            )
        seen = []
        for v in values:
            if v in seen:
                raise ParamsFileError(f"{where}: {name} choice lists {v!r} twice")
            seen.append(v)
        return SearchParam(name, distribution, tuple(values), 0, stripped)
    if distribution in ("uniform", "loguniform"):
        example = "low,high" + (", exponents: -9.2,-4.6 is 1e-4 .. 1e-2" if distribution == "loguniform" else "")
        low, high = _numbers(value, 2, where, name, distribution, example)
        if not low < high:
            raise ParamsFileError(f"{where}: {name} {distribution} needs low < high, not {value!r}")
        return SearchParam(name, distribution, (low, high), 0, stripped)
    low, high, q = _numbers(value, 3, where, name, distribution, "low,high,q, e.g. 1,8,1")
    if not low < high:
        raise ParamsFileError(f"{where}: {name} quniform needs low < high, not {value!r}")
    if not q > 0:
        raise ParamsFileError(f"{where}: {name} quniform needs a step q > 0, not {value!r}")
    return SearchParam(name, distribution, (low, high, q), 0, stripped)


def read_params_file(path, known=None):
    """Read and check a params file; return its :class:`SearchSpace` (raises :class:`ParamsFileError`).

    Args:
        path: the file.
        known: the config keys that may be searched; None: every key RecBole or the plugin knows
            (``recbole_beta.config.known_keys``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ParamsFileError(f"{path}: params file not found")
    if not os.path.isfile(path):
        raise ParamsFileError(f"{path}: not a file (give a params file: one '<key> <distribution> <values>' a line)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsFileError(f"{path}: cannot read the params file: {error}") from None
    known = known_keys() if known is None else frozenset(known)
    params, lines_of = [], {}
    for number, text in enumerate(lines, start=1):
        where = f"{path}:{number}"
        param = parse_params_line(text, where)
        if param is None:
            continue
        if param.name in ("model", "dataset"):
            raise ParamsFileError(f"{where}: {param.name} cannot be searched: a search is one model on one dataset")
        if param.name not in known:
            close = difflib.get_close_matches(param.name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (keys of your own go in a config file first)"
            raise ParamsFileError(f"{where}: unknown config key {param.name!r}{hint}")
        if param.name in lines_of:
            raise ParamsFileError(f"{where}: {param.name} is already searched on line {lines_of[param.name]}")
        lines_of[param.name] = number
        params.append(SearchParam(param.name, param.distribution, param.values, number, param.text))
    if not params:
        raise ParamsFileError(
            f"{path}: no parameters to search: give one '<key> <distribution> <values>' a line, "
            f"e.g. 'learning_rate loguniform -9.2,-4.6'"
        )
    return SearchSpace(params, path)


def default_params_file(model):
    """``properties/hyper/<Model>.hyper`` if the plugin ships one for the model, else None."""
    path = properties_dir() / "hyper" / f"{model}.hyper"
    return path if path.is_file() else None


# ------------------------------------------------------------------------------------------ one trial


def run_trial(model, dataset, config_file_list, fixed, params, trial_dir, write_results=True):
    """Run one trial with :func:`run_recbole_beta`; return its record (status ``ok`` or ``fail``).

    The trial's checkpoint (and its result JSON, unless results are switched off) go to ``trial_dir``,
    so trials never share a file, even when they start within the same second.
    """
    from recbole_beta.quick_start import run_recbole_beta

    config_dict = {**(fixed or {}), **params, "checkpoint_dir": os.path.join(trial_dir, "saved")}
    if write_results:
        config_dict["results_dir"] = trial_dir
    record = {"status": "ok", "params": plain(params), "trial_dir": os.fspath(trial_dir)}
    start = time.time()
    try:
        result = run_recbole_beta(model, dataset, config_file_list, config_dict=config_dict, saved=True)
    except TRIAL_ERRORS as error:
        record.update(status="fail", error=str(error), seconds=round(time.time() - start, 3))
        return record
    record.update(
        best_valid_score=plain(result["best_valid_score"]),
        valid_score_bigger=bool(result["valid_score_bigger"]),
        best_valid_result=plain(dict(result["best_valid_result"] or {})),
        test_result=plain(dict(result["test_result"] or {})),
        seconds=round(time.time() - start, 3),
        checkpoint=result["checkpoint"],
        result_file=result["result_file"],
    )
    return record


# ------------------------------------------------------------------------------------------ results


def best_record(records, bigger=True):
    """The first trial with the best valid score among the trials that finished (None if none did)."""
    best = None
    for record in records:
        if record.get("status") != "ok":
            continue
        score = record["best_valid_score"]
        if best is None or (score > best["best_valid_score"] if bigger else score < best["best_valid_score"]):
            best = record
    return best


@dataclass
class TrialLog:
    """Where a search's trials go, on either engine; lives in the driver (picklable: paths and data only)."""

    output_dir: str
    space: SearchSpace
    summary: dict
    bigger: bool = True
    keep_checkpoints: str = "best"
    records: list = field(default_factory=list)

    @property
    def jsonl(self):
        return os.path.join(self.output_dir, "trials.jsonl")

    def next_trial(self):
        return len(self.records) + 1

    def trial_dir(self, number):
        return os.path.join(self.output_dir, "trials", f"{number:04d}")

    def add(self, record):
        """Number the trial, apply the checkpoint policy, rewrite trials.jsonl; return the record."""
        record = {"trial": self.next_trial(), **record}
        previous_best = best_record(self.records, self.bigger)
        self.records.append(record)
        if self.keep_checkpoints != "all":
            best = best_record(self.records, self.bigger)
            drop = [r for r in (record, previous_best) if r is not None and r is not best]
            if self.keep_checkpoints == "none":
                drop = [record]
            for r in drop:
                if r.get("checkpoint") and os.path.isfile(r["checkpoint"]):
                    os.remove(r["checkpoint"])
                    r["checkpoint"] = None
        text = "".join(json.dumps(plain(r), sort_keys=False) + "\n" for r in self.records)
        write_text(self.jsonl, text)
        return record

    def finish(self, seconds):
        """Write trials.csv, best.json and the plot; return best.json's content."""
        write_csv(self.records, self.space, os.path.join(self.output_dir, "trials.csv"))
        best = best_record(self.records, self.bigger)
        summary = dict(self.summary)
        summary.update(
            n_trials=len(self.records),
            n_failed=sum(r.get("status") != "ok" for r in self.records),
            seconds=round(seconds, 3),
        )
        if best is not None:
            summary.update(
                trial=best["trial"],
                params=best["params"],
                best_valid_score=best["best_valid_score"],
                best_valid_result=best["best_valid_result"],
                test_result=best["test_result"],
                checkpoint=best.get("checkpoint"),
                result_file=best.get("result_file"),
                trial_dir=best.get("trial_dir"),
            )
            plot_trials(self.records, self.space, os.path.join(self.output_dir, "trials"),
                        bigger=self.bigger, metric=summary.get("valid_metric", "valid score"),
                        title=f"{summary.get('model')} on {summary.get('dataset')}: "
                              f"{summary.get('algo')} search ({summary.get('engine')})")
        write_text(os.path.join(self.output_dir, "best.json"), json.dumps(plain(summary), indent=2) + "\n")
        return summary


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def write_csv(records, space, path):
    """The trials as a table: trial, status, seconds, the parameters, valid_<metric>, test_<metric>."""
    valid = list(dict.fromkeys(k for r in records for k in (r.get("best_valid_result") or {})))
    test = list(dict.fromkeys(k for r in records for k in (r.get("test_result") or {})))
    header = ["trial", "status", "seconds", *space.names, "best_valid_score",
              *(f"valid_{m}" for m in valid), *(f"test_{m}" for m in test),
              "error", "checkpoint", "result_file", "trial_dir"]
    if any("ray_trial_id" in r for r in records):
        header.append("ray_trial_id")
    rows = []
    for r in records:
        row = {"trial": r.get("trial"), "status": r.get("status"), "seconds": r.get("seconds"),
               "best_valid_score": r.get("best_valid_score"), "error": r.get("error"),
               "checkpoint": r.get("checkpoint"), "result_file": r.get("result_file"),
               "trial_dir": r.get("trial_dir"), "ray_trial_id": r.get("ray_trial_id")}
        row.update({name: (r.get("params") or {}).get(name) for name in space.names})
        row.update({f"valid_{m}": (r.get("best_valid_result") or {}).get(m) for m in valid})
        row.update({f"test_{m}": (r.get("test_result") or {}).get(m) for m in test})
        rows.append({k: _cell(row.get(k)) for k in header})
    def write(f):
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write)


def _label(value):
    return value if isinstance(value, str) else json.dumps(plain(value))


def plot_trials(records, space, stem, bigger=True, metric="valid score", title=None):
    """Valid score per trial with the running best (top), and against each searched parameter (panels).

    Writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``; returns their paths.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, NullFormatter

    ok = [r for r in records if r.get("status") == "ok"]
    best = best_record(records, bigger)
    n = len(space.params)
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols + 0.8, 3.2 + 2.6 * rows), layout="constrained")
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[1.3] + [1] * rows)

    ax = fig.add_subplot(grid[0, :])
    trials = [r["trial"] for r in ok]
    scores = [r["best_valid_score"] for r in ok]
    ax.plot(trials, scores, "o", color="tab:blue", label="trial")
    running, current = [], None
    for s in scores:
        current = s if current is None else (max(current, s) if bigger else min(current, s))
        running.append(current)
    ax.step(trials, running, where="post", color="tab:orange", label="best so far")
    failed = [r["trial"] for r in records if r.get("status") != "ok"]
    if failed and scores:
        ax.plot(failed, [min(scores) if bigger else max(scores)] * len(failed), "x", color="tab:red",
                label="failed")
    if best is not None:
        ax.plot([best["trial"]], [best["best_valid_score"]], "*", color="tab:red", markersize=14, label="best")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} per trial")
    ax.legend(loc="best", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    for i, param in enumerate(space.params):
        pax = fig.add_subplot(grid[1 + i // cols, i % cols])
        xs = [(r.get("params") or {}).get(param.name) for r in ok]
        if param.distribution == "choice":
            labels = [_label(param.convert(v)) for v in param.values]
            index = {label: k for k, label in enumerate(labels)}
            positions = [index.get(_label(x), np.nan) for x in xs]
            pax.set_xticks(range(len(labels)))
            pax.set_xticklabels(labels, rotation=30, ha="right", fontsize="small")
            pax.set_xlim(-0.5, len(labels) - 0.5)
            xs_plot = positions
        else:
            xs_plot = [np.nan if x is None else float(x) for x in xs]
            low, high = param.values[0], param.values[1]
            if param.distribution == "loguniform":
                pax.set_xscale("log")
                margin = 0.05 * (high - low)
                pax.set_xlim(math.exp(low - margin), math.exp(high + margin))
                pax.xaxis.set_minor_formatter(NullFormatter())
            else:
                margin = 0.05 * (high - low)
                pax.set_xlim(low - margin, high + margin)
        pax.plot(xs_plot, scores, "o", color="tab:blue", alpha=0.8)
        if best is not None and best in ok:
            k = ok.index(best)
            pax.plot([xs_plot[k]], [scores[k]], "*", color="tab:red", markersize=12)
        pax.set_title(f"{param.name} ({param.distribution})", fontsize="medium")
        if i % cols == 0:
            pax.set_ylabel(metric)
    paths = []
    for ext in ("png", "svg"):
        path = f"{stem}.{ext}"
        fig.savefig(path, dpi=150)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ hyperopt


def _no_progress(patience):
    """hyperopt early_stop_fn: stop after ``patience`` finished trials in a row that do not beat the best."""

    def stop(trials, best=None, since=0):
        result = trials.trials[-1]["result"]
        loss = result.get("loss")
        if result.get("status") == "ok" and loss is not None and (best is None or loss < best):
            best, since = loss, 0
        else:
            since += 1
        return since >= patience, [best, since]

    return stop


def exhaustive_search(new_ids, domain, trials, seed, nbMaxSucessiveFailures=1000):
    """RecBole's ``exhaustive_search`` (hyper_tuning.py), with the random generator hyperopt >= 0.2.7 expects.

    RecBole 1.2.1 draws with ``np.random.RandomState``, whose lack of ``integers`` makes hyperopt 0.3's
    samplers fail (``AttributeError: 'RandomState' object has no attribute 'integers'``). Each call
    draws combinations until one not tried yet comes up; none after ``nbMaxSucessiveFailures``: the
    grid is done.
    """
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    def key(vals):
        return hash(frozenset((k, v[0]) if len(v) > 0 else (k, None) for k, v in vals.items()))

    seen = {key(trial["misc"]["vals"]) for trial in trials.trials}
    rng = np.random.default_rng(seed)
    docs = []
    for new_id in new_ids:
        for _ in range(nbMaxSucessiveFailures + 1):
            idxs, vals = pyll.rec_eval(domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng})
            if key(vals) not in seen:
                break
        else:
            return []
        seen.add(key(vals))
        new_result = domain.new_result()
        new_misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([new_misc], idxs, vals)
        docs.extend(trials.new_trial_docs([new_id], [None], [new_result], [new_misc]))
    return docs


class PluginHyperTuning(HyperTuning):
    """RecBole's HyperTuning, plus a search seed, an early stop that counts from the first trial, failed
    trials recorded (a diverged run does not end the search) and no progress bar."""

    def __init__(self, objective_function, *, seed=None, early_stop=10, **kwargs):
        super().__init__(objective_function, early_stop=max(1, early_stop or 1), **kwargs)
        self.seed = seed
        self.early_stop_fn = _no_progress(early_stop) if early_stop else None
        self.trials = None

    def trial(self, params):
        import hyperopt

        try:
            return super().trial(params)
        except _TrialFailed as failure:
            return {"status": hyperopt.STATUS_FAIL, "loss": float("inf"), "error": str(failure)}

    def run(self):
        from hyperopt import Trials, fmin

        self.trials = Trials()
        fmin(
            self.trial,
            self.space,
            algo=self.algo,
            max_evals=int(self.max_evals),
            trials=self.trials,
            early_stop_fn=self.early_stop_fn,
            rstate=None if self.seed is None else np.random.default_rng(self.seed),
            show_progressbar=False,
            return_argmin=False,
        )


class _Objective:
    """HyperTuning's objective: ``(config_dict, fixed_config_file_list) -> result dict``, each trial recorded."""

    def __init__(self, model, dataset, fixed, log, write_results):
        self.model, self.dataset, self.fixed, self.log = model, dataset, fixed, log
        self.write_results = write_results

    def __call__(self, config_dict, config_file_list):
        params = self.log.space.convert(config_dict)
        trial_dir = self.log.trial_dir(self.log.next_trial())
        os.makedirs(trial_dir, exist_ok=True)
        record = run_trial(self.model, self.dataset, config_file_list, self.fixed, params, trial_dir,
                           self.write_results)
        record = self.log.add(record)
        if record["status"] != "ok":
            print(f"trial {record['trial']} failed: {record['error']}")
            raise _TrialFailed(record["error"])
        return {
            "model": self.model,
            "best_valid_score": record["best_valid_score"],
            "valid_score_bigger": record["valid_score_bigger"],
            "best_valid_result": record["best_valid_result"],
            "test_result": record["test_result"],
        }


def _search_hyperopt(ctx):
    objective = _Objective(ctx["model"], ctx["dataset"], ctx["fixed"], ctx["log"], ctx["write_results"])
    tuning = PluginHyperTuning(
        objective,
        space=ctx["space"].hyperopt_space(),
        fixed_config_file_list=ctx["config_file_list"],
        # RecBole's exhaustive search fails on hyperopt 0.3 (see exhaustive_search); random and bayes are its own
        algo=exhaustive_search if ctx["algo"] == "exhaustive" else ctx["algo"],
        max_evals=ctx["max_evals"],
        early_stop=ctx["early_stop"],
        seed=ctx["seed"],
    )
    tuning.run()
    return tuning


# ------------------------------------------------------------------------------------------ ray


def _ray_trainable(config, model=None, dataset=None, config_file_list=None, fixed=None, space=None,
                   write_results=True, cpus_per_trial=1):
    """One Ray Tune trial (runs in a Ray worker): :func:`run_trial` in the trial's own directory."""
    import ray
    import torch
    from ray.air import session

    # RecBole's Config sets CUDA_VISIBLE_DEVICES to gpu_id (default '0'): give it the GPUs Ray assigned
    # to this trial ('' when none: the CPU), so that concurrent trials do not all land on GPU 0
    fixed = {**(fixed or {}), "gpu_id": ",".join(str(i) for i in ray.get_gpu_ids())}

    trial_dir = os.path.abspath(session.get_trial_dir())
    os.makedirs(trial_dir, exist_ok=True)
    os.chdir(trial_dir)  # RecBole writes log/ and log_tensorboard/ into the working directory
    torch.set_num_threads(max(1, int(cpus_per_trial)))
    params = space.convert(config)
    record = run_trial(model, dataset, config_file_list, fixed, params, trial_dir, write_results)
    score = record.get("best_valid_score")
    if score is None:  # a failed trial: the worst score, so that searchers move away from it
        score = -math.inf if record.get("valid_score_bigger", True) else math.inf
    session.report({"best_valid_score": score, "record": record})


def _ray_callbacks(log, patience, bigger):
    """The driver-side Tune callback that records trials, and the stopper for the search's early stop."""
    from ray import tune

    class RecordTrials(tune.Callback):
        def __init__(self, log):
            self.log = log

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record = dict(result.get("record") or {})
            if not record:
                return
            record["ray_trial_id"] = trial.trial_id
            record = self.log.add(record)
            print(f"trial {record['trial']} ({trial.trial_id}): {record['status']} "
                  f"{record.get('best_valid_score', record.get('error'))}")

        def on_trial_error(self, iteration, trials, trial, **info):
            message = "the trial raised an error"
            try:
                with open(trial.error_file, encoding="utf-8") as f:
                    lines = [line.strip() for line in f if line.strip()]
                message = lines[-1] if lines else message
            except (OSError, TypeError):
                pass
            self.log.add({"status": "error", "params": plain(self.log.space.convert(trial.config)),
                          "error": message, "trial_dir": trial.local_path, "ray_trial_id": trial.trial_id})

    class NoImprovement(tune.Stopper):
        """Stop the whole search after ``patience`` finished trials in a row without a better valid score."""

        def __init__(self, patience, bigger):
            self.patience, self.bigger = patience, bigger
            self.best, self.since = None, 0

        def __call__(self, trial_id, result):
            record = result.get("record") or {}
            score = record.get("best_valid_score")
            if record.get("status") == "ok" and score is not None and (
                self.best is None or (score > self.best if self.bigger else score < self.best)
            ):
                self.best, self.since = score, 0
            elif record:
                self.since += 1
            return False

        def stop_all(self):
            return bool(self.patience) and self.since >= self.patience

    return RecordTrials(log), NoImprovement(patience, bigger)


@contextmanager
def _python_path_for_workers():
    """Local Ray workers get this checkout on PYTHONPATH, so they import recbole_beta even uninstalled."""
    import recbole_beta

    root = str(Path(recbole_beta.__file__).resolve().parent.parent)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([before] if before else []))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _search_ray(ctx):
    import ray
    from ray import air, tune

    started = False
    if not ray.is_initialized():
        try:
            if ctx["ray_address"]:
                ray.init(address=ctx["ray_address"])
            else:
                with _python_path_for_workers():
                    ray.init(num_cpus=ctx["cpus"], include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {ctx['ray_address']}" if ctx["ray_address"] else "a local Ray instance"
            raise TuningError(f"could not start or reach {where}: {error}") from None
        started = True
    try:
        space, algo, bigger = ctx["space"], ctx["algo"], ctx["bigger"]
        trainable = tune.with_parameters(
            _ray_trainable,
            model=ctx["model"],
            dataset=ctx["dataset"],
            config_file_list=ctx["config_file_list"],
            fixed=ctx["fixed"],
            space=space,
            write_results=ctx["write_results"],
            cpus_per_trial=ctx["cpus_per_trial"],
        )
        trainable = tune.with_resources(trainable, {"cpu": ctx["cpus_per_trial"], "gpu": ctx["gpus_per_trial"]})
        mode = "max" if bigger else "min"
        if algo == "exhaustive":
            search_alg, num_samples = None, 1
        elif algo == "random":
            from ray.tune.search import BasicVariantGenerator

            search_alg, num_samples = BasicVariantGenerator(random_state=ctx["seed"]), ctx["max_evals"]
        else:
            from ray.tune.search.hyperopt import HyperOptSearch

            search_alg = HyperOptSearch(metric="best_valid_score", mode=mode, random_state_seed=ctx["seed"])
            num_samples = ctx["max_evals"]
        recorder, stopper = _ray_callbacks(ctx["log"], ctx["early_stop"], bigger)
        tuner = tune.Tuner(
            trainable,
            param_space=space.ray_space(grid=algo == "exhaustive"),
            tune_config=tune.TuneConfig(metric="best_valid_score", mode=mode, num_samples=num_samples,
                                        search_alg=search_alg),
            run_config=air.RunConfig(
                name="ray",
                storage_path=os.path.abspath(ctx["log"].output_dir),
                stop=stopper,
                callbacks=[recorder],
                verbose=ctx["verbose"],
                failure_config=air.FailureConfig(max_failures=0),
            ),
        )
        try:
            tuner.fit()
        except RuntimeError as error:
            # ray 2.6.3 ends every run by building its ExperimentAnalysis, which needs pyarrow (not a
            # dependency of RecBole's ray). By then every trial has finished and been recorded here.
            if "pyarrow" not in str(error) or importlib.util.find_spec("pyarrow") is not None:
                raise
        # the callback's log lives in the driver: copy its records back (the Tuner may hold a copy)
        ctx["log"].records[:] = recorder.log.records
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------ the search


@contextmanager
def _kept_environment(name):
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _check_values(space, base, model_class):
    """Every value the space can reach at its ends, checked by the model as a config is built."""
    validate = getattr(model_class, "validate_config", None)
    if validate is None:
        return
    for param in space.params:
        for value in param.extremes():
            value = param.convert(value)
            missing = param.name not in base.final_config_dict
            old = base.final_config_dict.get(param.name)
            base.final_config_dict[param.name] = value
            try:
                validate(base)
            except ConfigError as error:
                raise ParamsFileError(
                    f"{space.location(param)}: {param.name} {param.distribution} {''.join(param.text.split()[2:])} "
                    f"reaches {param.name}={value!r}, which the model refuses: {error}"
                ) from None
            finally:
                if missing:
                    del base.final_config_dict[param.name]
                else:
                    base.final_config_dict[param.name] = old


def prepare_search(model, dataset="ml-100k", params_file=None, algo="random", max_evals=None, early_stop=10,
                   config_file_list=None, fixed=None, engine="hyperopt", cpus=None, ray_address=None,
                   cpus_per_trial=1, gpus_per_trial=0, keep_checkpoints="best"):
    """Check everything a search needs, before any trial runs; return the search's context.

    Raises :class:`ParamsFileError` / :class:`TuningError` (or the plugin's ConfigError, UnknownModelError,
    DatasetNotFoundError for the fixed settings), each one line.
    """
    from recbole_beta.quick_start import check_dataset

    if algo not in ALGOS:
        raise TuningError(f"algo={algo!r} is not allowed: must be one of {', '.join(ALGOS)}")
    if engine not in ENGINES:
        raise TuningError(f"engine={engine!r} is not allowed: must be one of {', '.join(ENGINES)}")
    if keep_checkpoints not in KEEP_CHECKPOINTS:
        raise TuningError(f"keep_checkpoints={keep_checkpoints!r} is not allowed: must be one of "
                          f"{', '.join(KEEP_CHECKPOINTS)}")
    for key, value, minimum in (("max_evals", max_evals, 1), ("early_stop", early_stop, 0),
                                ("cpus", cpus, 1), ("cpus_per_trial", cpus_per_trial, 0),
                                ("gpus_per_trial", gpus_per_trial, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum):
            raise TuningError(f"{key}={value!r} is not allowed: must be a number >= {minimum}")
    if engine == "hyperopt" and (cpus is not None or ray_address):
        raise TuningError("--cpus and --ray_address are for --engine ray")
    if cpus is not None and ray_address:
        raise TuningError("--cpus starts a local Ray instance; a cluster at --ray_address has its own CPUs")

    model_class = get_model(model)  # UnknownModelError with close names
    model = model_class.__name__
    if params_file is None:
        params_file = default_params_file(model)
        if params_file is None:
            raise TuningError(
                f"no params file for {model}: the plugin ships one for its own models only "
                f"(properties/hyper/); give --params_file"
            )
    params_file = os.fspath(params_file)
    fixed = dict(fixed or {})
    config_file_list = [os.path.abspath(f) for f in (config_file_list or [])] or None
    for file in config_file_list or []:
        if not os.path.isfile(file):
            raise TuningError(f"config file {file} not found")

    with _kept_environment("CUDA_VISIBLE_DEVICES"):  # RecBole's Config sets it; a local Ray would inherit it
        base = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=dict(fixed),
                      argv=[])
    check_dataset(base)
    if not os.path.isabs(base["data_path"]):
        # Ray trials work in their own folders: a data_path relative to here is made absolute
        fixed["data_path"] = os.path.abspath(os.path.dirname(base["data_path"]))
    # keys a config file or the fixed settings introduce (a strategy of your own, say) may be searched too
    known = known_keys() | set(base.final_config_dict)
    # RecBole passes any key on, so a typo (in the fixed keys or a config file) would quietly change nothing
    for warning in unknown_key_warnings(base.external_config_dict):
        print(f"recbole-beta: warning: {warning}", file=sys.stderr)  # each trial's log says it again
    space = read_params_file(params_file, known=known)
    for param in space.params:
        if param.name in fixed:
            raise ParamsFileError(
                f"{space.location(param)}: {param.name} is searched here and also fixed "
                f"({param.name}={fixed[param.name]!r}); drop one of them"
            )
    _check_values(space, base, model_class)

    if algo == "exhaustive":
        space.require_grid()
        size = space.grid_size()
        if max_evals is not None and max_evals < size:
            raise TuningError(
                f"--algo exhaustive runs all {size} combinations of {space.file}; max_evals={max_evals} is "
                f"fewer (leave it out, or use --algo random)"
            )
        max_evals = size
    elif max_evals is None:
        max_evals = 20
    return {
        "model": model,
        "dataset": base["dataset"],
        "space": space,
        "algo": algo,
        "engine": engine,
        "max_evals": int(max_evals),
        "early_stop": int(early_stop or 0),
        "config_file_list": config_file_list,
        "fixed": fixed,
        "bigger": bool(base["valid_metric_bigger"]),
        "valid_metric": base["valid_metric"],
        "write_results": bool(base["results_dir"]),
        "cpus": cpus,
        "ray_address": ray_address,
        "cpus_per_trial": cpus_per_trial,
        "gpus_per_trial": gpus_per_trial,
        "keep_checkpoints": keep_checkpoints,
    }


def run_search(model, dataset="ml-100k", params_file=None, algo="random", max_evals=None, early_stop=10,
               config_file_list=None, fixed=None, output_dir=None, engine="hyperopt", cpus=None,
               ray_address=None, cpus_per_trial=1, gpus_per_trial=0, seed=None, keep_checkpoints="best",
               verbose=1):
    """Search a model's hyperparameters; return best.json's content (with ``trials``: every record).

    Args:
        model (str): a plugin or RecBole model.
        dataset (str): as for run_recbole_beta.
        params_file (str): the space; None: ``properties/hyper/<model>.hyper``.
        algo (str): ``random`` (hyperopt's rand / Ray's random sampling), ``bayes`` (TPE: hyperopt's
            tpe, or Ray's HyperOptSearch) or ``exhaustive`` (every combination of a choice-only file).
        max_evals (int): trials for random and bayes (default 20); exhaustive runs the whole grid.
        early_stop (int): stop after this many finished trials in a row without a better valid score
            (HyperTuning's ``early_stop``); 0 or None: never.
        config_file_list (list of str): fixed YAML config files.
        fixed (dict): fixed config keys, above the files; searched keys go above both.
        output_dir (str): where the results go; default ``hyper/<model>-<dataset>-<time>``. A folder
            holding an earlier search's trials.jsonl is refused.
        engine (str): ``hyperopt`` (RecBole's HyperTuning, trials one after another) or ``ray`` (Ray Tune).
        cpus (int): ray, local: CPUs of the Ray instance started for the search (default: all).
        ray_address (str): ray: an existing cluster's address (``auto``, ``host:6379``).
        cpus_per_trial, gpus_per_trial: ray: resources each trial reserves.
        seed (int): the search's random seed (which points are tried); the training seed is the
            config's ``seed``.
        keep_checkpoints (str): ``best`` (only the best trial's checkpoint is kept), ``all`` or ``none``.
        verbose (int): ray: Tune's console output (0 silent, 1 status updates).
    """
    start = time.time()
    ctx = prepare_search(model, dataset, params_file, algo, max_evals, early_stop, config_file_list, fixed,
                         engine, cpus, ray_address, cpus_per_trial, gpus_per_trial, keep_checkpoints)
    output_dir = os.path.abspath(output_dir or os.path.join("hyper", f"{ctx['model']}-{ctx['dataset']}-"
                                                                       f"{get_local_time()}"))
    if os.path.exists(os.path.join(output_dir, "trials.jsonl")):
        raise TuningError(f"{output_dir} already holds a search (trials.jsonl): choose another --output_dir")
    os.makedirs(output_dir, exist_ok=True)
    summary = {
        "model": ctx["model"],
        "dataset": ctx["dataset"],
        "engine": engine,
        "algo": algo,
        "params_file": os.path.abspath(ctx["space"].file),
        "space": ctx["space"].to_dict()["params"],
        "valid_metric": ctx["valid_metric"],
        "valid_score_bigger": ctx["bigger"],
        "max_evals": ctx["max_evals"],
        "early_stop": ctx["early_stop"],
        "seed": seed,
        "config_files": ctx["config_file_list"],
        "fixed": plain(ctx["fixed"]),
    }
    ctx.update(seed=seed, verbose=verbose, log=TrialLog(output_dir, ctx["space"], summary, ctx["bigger"],
                                                        ctx["keep_checkpoints"]))
    if engine == "hyperopt":
        _search_hyperopt(ctx)
    else:
        _search_ray(ctx)
    log = ctx["log"]
    best = log.finish(time.time() - start)
    if not log.records:
        raise TuningError(f"no trial ran (results in {output_dir})")
    if best.get("trial") is None:
        errors = [r.get("error") for r in log.records if r.get("error")]
        first = errors[0] if errors else "?"
        raise TuningError(f"all {len(log.records)} trials failed (see {log.jsonl}); the first: {first}")
    return {**best, "output_dir": output_dir, "trials": list(log.records)}


# ------------------------------------------------------------------------------------------ command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_hyper.py",
        allow_abbrev=False,  # --key=value config keys must not be taken for a prefix of an option
        description="Search the hyperparameters of a recbole-beta or RecBole model with RecBole's HyperTuning "
        "(hyperopt) or Ray Tune. Every trial is a full run_recbole_beta run; any other --key=value fixes "
        "that config key for every trial.",
    )
    parser.add_argument("--model", "-m", default="BetaMultVAE", help="model name (default: BetaMultVAE)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k)")
    parser.add_argument("--params_file", default=None,
                        help="the search space (default: properties/hyper/<model>.hyper, shipped for the "
                        "plugin's models)")
    parser.add_argument("--algo", default="random", choices=ALGOS,
                        help="random (default), bayes (TPE) or exhaustive (every combination of a choice-only file)")
    parser.add_argument("--max_evals", type=int, default=None,
                        help="trials for random and bayes (default 20); exhaustive runs the whole grid")
    parser.add_argument("--early_stop", type=int, default=10,
                        help="stop after this many trials in a row without a better valid score (default 10; 0: never)")
    parser.add_argument("--config_files", default=None, help="fixed YAML config files, separated by spaces")
    parser.add_argument("--output_dir", default=None,
                        help="where trials.jsonl, trials.csv, best.json and the plot go "
                        "(default: hyper/<model>-<dataset>-<time>)")
    parser.add_argument("--engine", default="hyperopt", choices=ENGINES,
                        help="hyperopt (RecBole's HyperTuning, default) or ray (Ray Tune)")
    parser.add_argument("--cpus", type=int, default=None, help="ray: CPUs of the local Ray instance (default: all)")
    parser.add_argument("--ray_address", default=None, help="ray: address of an existing Ray cluster (auto, host:6379)")
    parser.add_argument("--cpus_per_trial", type=float, default=1, help="ray: CPUs each trial reserves (default 1)")
    parser.add_argument("--gpus_per_trial", type=float, default=0, help="ray: GPUs each trial reserves (default 0)")
    parser.add_argument("--search_seed", type=int, default=None, help="seed of the search itself (default: random)")
    parser.add_argument("--keep_checkpoints", default="best", choices=KEEP_CHECKPOINTS,
                        help="best (default: only the best trial's), all or none")
    return parser


def _fixed_from_argv(unknown):
    fixed = {}
    for arg in unknown:
        if not arg.startswith("--") or len(arg[2:].split("=")) != 2:
            raise TuningError(f"unrecognized argument {arg!r}: config keys are given as --key=value")
        key, value = arg[2:].split("=")
        fixed[key] = value
    return RecBoleConfig._convert_config_dict(None, fixed)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = build_parser().parse_known_args(argv)
    try:
        fixed = _fixed_from_argv(unknown)
        best = run_search(
            args.model,
            args.dataset,
            params_file=args.params_file,
            algo=args.algo,
            max_evals=args.max_evals,
            early_stop=args.early_stop,
            config_file_list=args.config_files.strip().split() if args.config_files else None,
            fixed=fixed,
            output_dir=args.output_dir,
            engine=args.engine,
            cpus=args.cpus,
            ray_address=args.ray_address,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            seed=args.search_seed,
            keep_checkpoints=args.keep_checkpoints,
        )
    except RecBoleBetaError as error:
        print(f"recbole-beta: {error}", file=sys.stderr)
        return 2
    print(f"trials: {best['n_trials']} ({best['n_failed']} failed) in {best['seconds']:.1f} s")
    print(f"best params (trial {best['trial']}): {best['params']}")
    print(f"best valid: {best['best_valid_result']}")
    print(f"test result: {best['test_result']}")
    print(f"results: {best['output_dir']} (trials.jsonl, trials.csv, best.json, trials.png)")
    return 0
