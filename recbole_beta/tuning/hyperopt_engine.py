"""Engine ``hyperopt``: RecBole's HyperTuning, trials one after another in this process.

As in RecBole's ``run_hyper.py``: an objective ``(config_dict, config_file_list) -> result``, a
HyperTuning on the params file's space, ``run()``. The objective is the plugin's (every trial a
:class:`~recbole_beta.tuning.trials.TrialJob` run by the in-process engine of
:mod:`recbole_beta.runs.engines`, recorded in the search's TrialLog) because RecBole's
``objective_function`` builds RecBole's Config and model, which do not know the plugin's models.
"""

import numpy as np
from recbole.trainer import HyperTuning

from recbole_beta.runs.engines import InProcess
from recbole_beta.runs.record import is_ok
from recbole_beta.tuning.trials import Patience, TrialJob


class _TrialFailed(Exception):
    """Raised by the objective once a failed trial is recorded; :meth:`PluginHyperTuning.trial` catches it."""


class PluginHyperTuning(HyperTuning):
    """RecBole's HyperTuning (its ``early_stop_fn``, hyperopt's ``no_progress_loss``, included) with a search
    seed, failed trials recorded (a diverged run does not end the search), no progress bar, and its own
    exhaustive search, which stops by the same rule (:class:`Patience`).

    ``algo="exhaustive"`` runs :meth:`SearchSpace.grid` (``itertools.product``) in file order instead of
    RecBole's ``exhaustive_search``, which fails on hyperopt 0.3 (it passes hyperopt a
    ``np.random.RandomState``, which has no ``integers``).
    """

    def __init__(self, objective_function, space, algo, max_evals, patience, seed=None,
                 fixed_config_file_list=None):
        grid = algo == "exhaustive"
        # "random" only keeps RecBole's "exhaustive" branch (and its exhaustive_search) out of the way
        super().__init__(objective_function, space=space.hyperopt_space(),
                         fixed_config_file_list=fixed_config_file_list,
                         algo="random" if grid else algo, max_evals=max_evals, early_stop=patience.patience or 1)
        if not patience.patience:  # 0: never stop early (no_progress_loss(0) would stop at the second trial)
            self.early_stop_fn = None
        self.grid = space.grid() if grid else None
        self.patience = patience
        self.seed = seed
        self.trials = None

    def trial(self, params):
        import hyperopt

        try:
            return super().trial(params)
        except _TrialFailed as failure:  # hyperopt's own status for a failed point: TPE moves away from it
            return {"status": hyperopt.STATUS_FAIL, "loss": float("inf"), "error": str(failure)}

    def run(self):
        """HyperTuning.run: hyperopt's ``fmin``, or every point of the grid, until the patience runs out."""
        from hyperopt import Trials, fmin

        if self.grid is not None:
            for params in self.grid:
                self.trial(params)
                if self.patience.exhausted:
                    break
            return
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


def run(search, log):
    """Run ``search`` (a :class:`~recbole_beta.tuning.search.Search`), each trial added to ``log``."""
    patience = Patience(search.early_stop, search.bigger)

    def objective(config_dict, config_file_list):
        """RecBole's ``objective_function`` for the plugin: HyperTuning passes the search's config files back."""
        job = TrialJob(search, search.space.convert(config_dict), log.trial_dir(log.next_trial()))
        records = []
        InProcess().run([job], lambda job, record: records.append(log.add(record)))
        record = records[0]
        patience.add(record)  # the grid's stop; fmin's is HyperTuning's early_stop_fn
        if not is_ok(record):
            print(f"trial {record['trial']} failed: {record['error']}")
            raise _TrialFailed(record["error"])
        return {
            "model": search.model,
            "best_valid_score": record["best_valid_score"],
            "valid_score_bigger": record["valid_score_bigger"],
            "best_valid_result": record["best_valid_result"],
            "test_result": record["test_result"],
        }

    tuning = PluginHyperTuning(objective, search.space, search.algo, search.max_evals, patience, seed=search.seed,
                               fixed_config_file_list=search.config_file_list)
    tuning.run()
    return tuning
