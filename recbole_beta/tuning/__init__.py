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

The modules, each importing only those above it in this list (and the plugin's lower layers):

- :mod:`~recbole_beta.tuning.space`: the params file, read and checked; its translation to either engine;
  the package's errors;
- :mod:`~recbole_beta.tuning.plots`: the trials figure;
- :mod:`~recbole_beta.tuning.trials`: one trial's run and record, the early-stop rule (``Patience``), the
  best trial, the results files;
- :mod:`~recbole_beta.tuning.hyperopt_engine`, :mod:`~recbole_beta.tuning.ray_engine`: one engine each;
- :mod:`~recbole_beta.tuning.search`: the checks before any trial (``prepare_search`` -> ``Search``) and
  ``run_search``, which picks the engine;
- :mod:`~recbole_beta.tuning.cli`: ``run_hyper.py``'s command line (``main``). A command line sits above
  the layers, so this package does not import it: ``from recbole_beta.tuning.cli import main``.
"""

from recbole_beta.tuning.search import ALGOS, ENGINES, RayOptions, Search, prepare_search, run_search
from recbole_beta.tuning.space import (
    DISTRIBUTIONS,
    ParamsFileError,
    SearchParam,
    SearchSpace,
    TuningError,
    default_params_file,
    read_params_file,
)
from recbole_beta.tuning.trials import KEEP_CHECKPOINTS, Patience

__all__ = [
    "ALGOS",
    "DISTRIBUTIONS",
    "ENGINES",
    "KEEP_CHECKPOINTS",
    "ParamsFileError",
    "Patience",
    "RayOptions",
    "Search",
    "SearchParam",
    "SearchSpace",
    "TuningError",
    "default_params_file",
    "prepare_search",
    "read_params_file",
    "run_search",
]
