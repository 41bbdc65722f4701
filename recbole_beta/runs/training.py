"""One training and its outcome, in the one vocabulary of run states.

:func:`train` runs :func:`run_recbole_beta` for sweeps and searches alike; :func:`driver_config` and
:func:`absolute_data_path` check a run in the driver before it goes elsewhere."""

import os
import time
import traceback
from dataclasses import dataclass

from recbole_beta.config import Config
from recbole_beta.quick_start import run_recbole_beta
from recbole_beta.runs.environment import kept_environ

#: the states of a run, in every record the plugin writes (a sweep's run, a search's trial)
OK, FAILED = "ok", "failed"
STATES = (OK, FAILED)


@dataclass
class Outcome:
    """What one training came to: ``status`` OK with run_recbole_beta's ``result``, or FAILED with the
    error (``"Type: message"``) and its traceback; ``seconds`` of wall time either way."""

    status: str
    seconds: float
    result: dict = None
    error: str = None
    traceback: str = None


def train(model, dataset, config_file_list=None, config_dict=None, recorded=(Exception,), **options):
    """Run one training; an error of a type in ``recorded`` becomes a FAILED :class:`Outcome` (the study
    goes on), any other propagates. ``options`` go to :func:`run_recbole_beta` (``per_user``, ``saved``,
    ``console_level``)."""
    start = time.time()
    try:
        result = run_recbole_beta(model, dataset, config_file_list=config_file_list or None,
                                  config_dict=dict(config_dict or {}), **options)
    except recorded as error:
        return Outcome(FAILED, time.time() - start, error=f"{type(error).__name__}: {error}",
                       traceback=traceback.format_exc())
    return Outcome(OK, time.time() - start, result=result)


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
