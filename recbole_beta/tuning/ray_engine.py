"""Engine ``ray``: Ray Tune, trials in parallel on a local Ray instance or a cluster.

Engine ``ray``: Ray Tune (ray 2.6.3, installed with RecBole), trials in parallel on a local Ray instance
or an existing cluster.

Each trial is :func:`trainable` in a Ray worker: the same :class:`~recbole_beta.tuning.trials.TrialJob`
as the hyperopt engine's, in the trial's own folder, its record reported once (Tune, not
:mod:`recbole_beta.runs.engines`, schedules the trials: its searchers pick each point from the results so far).
A callback in the driver adds the records to the search's TrialLog as they arrive, so the results files are
the hyperopt engine's; a Stopper applies the same :class:`~recbole_beta.tuning.trials.Patience`. ``random`` is Ray's
BasicVariantGenerator, ``bayes`` its HyperOptSearch (hyperopt's TPE), ``exhaustive`` ``tune.grid_search``.
"""

import importlib.util
import math
import os

from ray import air, tune
from ray.air import session

from recbole_beta.files import plain
from recbole_beta.runs.raycluster import RayUnavailable, ray_session
from recbole_beta.runs.record import RunRecord, RunStatus
from recbole_beta.runs.worker import plugin_paths, ray_gpu_ids, run_threads, set_up_worker
from recbole_beta.tuning.space import TuningError
from recbole_beta.tuning.trials import Patience, TrialJob

METRIC = "best_valid_score"


def trainable(config, search=None):
    """One Ray Tune trial (runs in a Ray worker): ``config`` holds the sampled parameters. Set up as every
    worker is (:func:`~recbole_beta.runs.worker.set_up_worker`), in the trial's folder; its output stays with
    Tune (which sends it to the driver's console)."""
    trial_dir = os.path.abspath(session.get_trial_dir())
    job = TrialJob(search, search.space.convert(config), trial_dir)
    set_up_worker(run_threads(cpus=search.ray.cpus_per_run), trial_dir, output=False, plugins=job.plugins)
    record = job.work(gpu_id=ray_gpu_ids())
    score = record.get(METRIC)
    if score is None:  # a failed trial: the worst score, so that searchers move away from it
        score = -math.inf if record.get("valid_score_bigger", True) else math.inf
    session.report({METRIC: score, "record": record})


class RecordTrials(tune.Callback):
    """In the driver: each reported record added to the search's TrialLog (numbered, trials.jsonl rewritten)."""

    def __init__(self, log):
        self.log = log

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = dict(result.get("record") or {})
        if not record:
            return
        record["ray_trial_id"] = trial.trial_id
        record = self.log.add(record)
        print(f"trial {record['trial']} ({trial.trial_id}): {record['status']} "
              f"{record.get(METRIC, record.get('error'))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        """A trial that raised (not one the model refused: that one reports a failed record): its last line."""
        message = "the trial raised an error"
        try:
            with open(trial.error_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip()]
            message = lines[-1] if lines else message
        except (OSError, TypeError):
            pass
        self.log.add({**RunRecord(RunStatus.FAILED, error=message).to_dict(),
                      "params": plain(self.log.space.convert(trial.config)), "trial_dir": trial.local_path,
                      "ray_trial_id": trial.trial_id})


class NoImprovement(tune.Stopper):
    """The search's :class:`Patience` as a Tune Stopper: ``stop_all`` ends the experiment (trials still
    running are stopped); single trials are never stopped, each reports once."""

    def __init__(self, patience):
        self.patience = patience

    def __call__(self, trial_id, result):
        if result.get("record"):
            self.patience.add(result["record"])
        return False

    def stop_all(self):
        return self.patience.exhausted


def _search_alg(search, mode):
    """Tune's searcher for the algo and its number of samples (a grid: one sample of every combination)."""
    if search.algo == "exhaustive":
        return None, 1
    if search.algo == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed), search.max_evals
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(metric=METRIC, mode=mode, random_state_seed=search.seed), search.max_evals


def run(search, log):
    """Run ``search`` (a :class:`~recbole_beta.tuning.search.Search`), each trial added to ``log``; start a
    local Ray instance (and shut it down after) unless one is running or ``search.ray.address`` is given."""
    options = search.ray
    try:
        with ray_session(options.cpus, options.address, plugin_paths(search.plugins)):
            _fit(search, log, options)
    except RayUnavailable as error:
        raise TuningError(str(error)) from None


def _fit(search, log, options):
    """Tune's run of the search on the Ray this process is connected to."""
    mode = "max" if search.bigger else "min"
    search_alg, num_samples = _search_alg(search, mode)
    recorder = RecordTrials(log)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, search=search),
                            {"cpu": options.cpus_per_run, "gpu": options.gpus_per_run}),
        param_space=search.space.ray_space(grid=search.algo == "exhaustive"),
        tune_config=tune.TuneConfig(metric=METRIC, mode=mode, num_samples=num_samples, search_alg=search_alg),
        run_config=air.RunConfig(
            name="ray",
            storage_path=os.path.abspath(log.output_dir),
            stop=NoImprovement(Patience(search.early_stop, search.bigger)),
            callbacks=[recorder],
            verbose=options.verbose,
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
    # the callback's log lives in the driver: copy its records back, in case the Tuner held a copy
    log.records[:] = recorder.log.records
