"""Trials, the same on both engines: one trial, its record, the early stop, the results files.

A trial is a :class:`TrialJob`, trained as every run is, by :func:`recbole_beta.runs.training.train`.
Results files: ``trials.jsonl`` after each trial; ``trials.csv``, ``best.json`` and the plot at the end.
"""

import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import pandas as pd

from recbole_beta.errors import ConfigError, TrainingDivergedError
from recbole_beta.files import atomic_write, plain, write_text
from recbole_beta.runs.engines import Job
from recbole_beta.runs.record import is_ok
from recbole_beta.runs.training import train
from recbole_beta.tuning.plots import plot_trials
from recbole_beta.tuning.space import SearchSpace

KEEP_CHECKPOINTS = ("best", "all", "none")

#: errors of one trial that do not stop the search: the trial is recorded as failed
TRIAL_ERRORS = (ConfigError, TrainingDivergedError)


def run_trial(search, params, trial_dir, overrides=None):
    """Run one trial; return its record: the trial's parameters and folder, then the
    :class:`~recbole_beta.runs.record.RunRecord` every run's record holds (status OK, or FAILED for an error
    the model or the trainer raise about the trial's values: the search goes on; any other error stops the
    search), then its checkpoint and result file, and ``seconds`` (its wall time as trials.csv shows it).

    The config is the search's config files and fixed keys, then ``overrides`` (the engine's own, e.g.
    Ray's GPUs), then the trial's ``params``. The trial's checkpoint (and its result JSON, unless results
    are switched off) go to ``trial_dir``, so trials never share a file, even when they start within the
    same second.
    """
    config_dict = {**search.fixed, **(overrides or {}), **params, "checkpoint_dir": os.path.join(trial_dir, "saved")}
    if search.write_results:
        config_dict["results_dir"] = trial_dir
    outcome = train(search.model, search.dataset, search.config_file_list, config_dict, recorded=TRIAL_ERRORS,
                    saved=True)
    shared = outcome.record.to_dict()
    record = {"status": shared.pop("status"), "params": plain(params), "trial_dir": os.fspath(trial_dir), **shared,
              "seconds": round(outcome.seconds, 3)}
    if outcome.record.ok:
        record.update(checkpoint=outcome.result["checkpoint"], result_file=outcome.result["result_file"])
    return record


class TrialJob(Job):
    """One trial for an engine of :mod:`recbole_beta.runs.engines` (or a Ray Tune trainable): its record."""

    def __init__(self, search, params, trial_dir):
        self.search, self.params, self.trial_dir = search, params, os.fspath(trial_dir)
        self.key = f"trial {os.path.basename(self.trial_dir)}"
        self.plugins = tuple(search.plugins)

    def work(self, gpu_id=None, driver_writes=False):
        os.makedirs(self.trial_dir, exist_ok=True)
        return run_trial(self.search, self.params, self.trial_dir, None if gpu_id is None else {"gpu_id": gpu_id})


def best_record(records, bigger=True):
    """The first trial with the best valid score among the trials that finished (None if none did)."""
    best = None
    for record in records:
        score = record.get("best_valid_score")
        if is_ok(record) and (best is None or (score > best["best_valid_score"] if bigger
                                                             else score < best["best_valid_score"])):
            best = record
    return best


class Patience:
    """The early stop (HyperTuning's ``early_stop``) where hyperopt's ``fmin`` does not drive the search (the
    grid, Ray Tune): hyperopt's own rule, ``no_progress_loss(patience)``, which RecBole's HyperTuning wires
    into ``fmin``, fed one trial at a time, so every engine stops at the same trial. A failed trial counts
    as no improvement; a patience of 0 never stops. As hyperopt counts, the first trial is one without
    progress: with patience p, a search whose first trial stays best stops after trial p."""

    def __init__(self, patience, bigger=True):
        from hyperopt.early_stop import no_progress_loss

        self.patience, self.bigger = patience, bigger
        self._rule, self._state, self.exhausted = no_progress_loss(patience), [], False

    def add(self, record):
        """Count one finished trial's record; return whether the search is over."""
        score = record.get("best_valid_score")
        if not is_ok(record) or score is None:
            loss = float("inf")
        else:
            loss = -score if self.bigger else score  # as HyperTuning.trial turns a score into a loss
        # all the rule reads of hyperopt's Trials is the last trial's loss
        stop, self._state = self._rule(SimpleNamespace(trials=[{"result": {"loss": loss}}]), *self._state)
        self.exhausted = self.exhausted or (bool(self.patience) and stop)
        return self.exhausted


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
            # "best": only the new trial and the one it may have dethroned can have lost their place
            best = best_record(self.records, self.bigger)
            drop = [r for r in (record, previous_best) if r is not None and r is not best]
            if self.keep_checkpoints == "none":
                drop = [record]
            for r in drop:
                if r.get("checkpoint") and os.path.isfile(r["checkpoint"]):
                    os.remove(r["checkpoint"])
                    r["checkpoint"] = None
        # the whole file, atomically: a reader (or a crash) never sees half a line
        write_text(self.jsonl, "".join(json.dumps(plain(r)) + "\n" for r in self.records))
        return record

    def finish(self, seconds):
        """Write trials.csv, best.json and the plot; return best.json's content."""
        write_csv(self.records, self.space, os.path.join(self.output_dir, "trials.csv"))
        best = best_record(self.records, self.bigger)
        summary = dict(self.summary)
        summary.update(
            n_trials=len(self.records),
            n_failed=sum(not is_ok(r) for r in self.records),
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
            plot_trials(self.records, self.space, os.path.join(self.output_dir, "trials"), best=best,
                        bigger=self.bigger, metric=summary.get("valid_metric", "valid score"),
                        title=f"{summary.get('model')} on {summary.get('dataset')}: "
                              f"{summary.get('algo')} search ({summary.get('engine')})")
        write_text(os.path.join(self.output_dir, "best.json"), json.dumps(plain(summary), indent=2) + "\n")
        return summary


def _frame(dicts, columns=None):
    """Dicts as rows, lists and dicts as JSON; dtype object keeps every value as it is (an int column
    with a gap does not turn into floats)."""
    # not pd.json_normalize: it infers dtypes (an int column with a gap writes 1.0) and leaves lists as
    # Python reprs ("[1, 2]" unquoted differs from JSON for strings); tried on pandas 2.3
    rows = [{k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in d.items()} for d in dicts]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def trials_table(records, space):
    """The trials as a table: trial, status, seconds, the parameters, best_valid_score, valid_<metric>,
    test_<metric>, error, the paths, and ray_trial_id on Ray; one row per record, empty cells for what a
    record lacks."""
    tail = ["error", "checkpoint", "result_file", "trial_dir"]
    if any("ray_trial_id" in r for r in records):
        tail.append("ray_trial_id")
    return pd.concat([
        _frame(records, ["trial", "status", "seconds"]),
        _frame([r.get("params") or {} for r in records], space.names),
        _frame(records, ["best_valid_score"]),
        _frame([r.get("best_valid_result") or {} for r in records]).add_prefix("valid_"),
        _frame([r.get("test_result") or {} for r in records]).add_prefix("test_"),
        _frame(records, tail),
    ], axis=1)


def write_csv(records, space, path):
    """:func:`trials_table` as ``path``, atomically."""
    table = trials_table(records, space)
    # "\r\n": the line ending trials.csv has always had (the csv module's)
    return atomic_write(path, lambda f: table.to_csv(f, index=False, lineterminator="\r\n"))
