"""One training and its outcome, in the one vocabulary of run states (:mod:`recbole_beta.runs.record`).

:func:`train` runs :func:`run_recbole_beta` for sweeps and searches alike; its :class:`Outcome` holds the
run's :class:`~recbole_beta.runs.record.RunRecord`, the protocol in it settled by :func:`run_protocol`;
:func:`driver_config` and :func:`absolute_data_path` check a run in the driver before it goes elsewhere."""

import os
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass

from recbole_beta.config import Config
from recbole_beta.data.heldout import split_keys
from recbole_beta.files import plain
from recbole_beta.quick_start import run_recbole_beta
from recbole_beta.runs.environment import kept_environ
from recbole_beta.runs.record import RunRecord, RunStatus

#: the states of a run, in every record the plugin writes (a sweep's run, a search's trial)
OK, FAILED = RunStatus.OK, RunStatus.FAILED
STATES = tuple(RunStatus)


def run_protocol(config):
    """The protocol a run ran under, from its final config (a mapping): the settings that decide its split
    (:func:`~recbole_beta.data.heldout.split_keys`: ``eval_protocol``; under the strong protocol
    ``heldout_users``, ``heldout_ratio``, ``split_seed``, ``heldout_folds`` and, with folds, ``fold``, unset
    read as 0; under the weak one RecBole's split arguments) and its training ``seed``. The one place these
    are settled; every record holds them as ``protocol``."""
    config = defaultdict(lambda: None, config)
    return plain({**split_keys(config), "seed": config["seed"]})


@dataclass
class Outcome:
    """What one training came to: its :class:`RunRecord` (the part of a record every study writes) and, when
    it finished, run_recbole_beta's whole ``result`` (the per-user table, the checkpoint, the result file)."""

    record: RunRecord
    result: dict = None

    @property
    def status(self):
        return self.record.status

    @property
    def seconds(self):
        return self.record.wall_seconds

    @property
    def error(self):
        return self.record.error

    @property
    def traceback(self):
        return self.record.traceback


def train(model, dataset, config_file_list=None, config_dict=None, recorded=(Exception,), **options):
    """Run one training; return its :class:`Outcome`. An error of a type in ``recorded`` is a FAILED record
    (the study goes on), any other propagates. ``options`` go to :func:`run_recbole_beta` (``per_user``,
    ``saved``, ``console_level``)."""
    start = time.time()
    try:
        result = run_recbole_beta(model, dataset, config_file_list=config_file_list or None,
                                  config_dict=dict(config_dict or {}), **options)
    except recorded as error:
        return Outcome(RunRecord(FAILED, wall_seconds=time.time() - start, error=f"{type(error).__name__}: {error}",
                                 traceback=traceback.format_exc()))
    record = RunRecord(
        OK,
        wall_seconds=time.time() - start,
        best_valid_score=plain(result["best_valid_score"]),
        valid_score_bigger=bool(result["valid_score_bigger"]),
        best_valid_result=plain(dict(result["best_valid_result"] or {})),
        test_result=None if result["test_result"] is None else plain(dict(result["test_result"])),  # None: untested
        history=result["history"],
        train_seconds=result["train_seconds"],
        protocol=run_protocol(result["config"]),
        protocol_users=result.get("protocol_users") or None,
    )
    return Outcome(record, result)


def driver_config(model, dataset, config_file_list=None, config_dict=None):
    """The plugin's Config of a run, built in the driver to check it before it runs elsewhere; the
    environment is left as it was (RecBole's Config sets ``CUDA_VISIBLE_DEVICES``, which a local Ray
    instance or a worker process started afterwards would inherit)."""
    with kept_environ("CUDA_VISIBLE_DEVICES"):
        return Config(model=model, dataset=dataset, config_file_list=config_file_list or None,
                      config_dict=dict(config_dict or {}), argv=[])


def absolute_data_path(config):
    """The ``data_path`` a run needs in a worker of its own (another working directory): the config's, made
    absolute against this working directory as RecBole would have read it here; None when it already is."""
    path = config["data_path"]  # RecBole's: the configured data_path joined with the dataset's name
    return None if os.path.isabs(path) else os.path.abspath(os.path.dirname(os.path.normpath(path)))
