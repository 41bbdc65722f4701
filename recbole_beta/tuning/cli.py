"""Command line of ``run_hyper.py``: parse, :func:`~recbole_beta.tuning.search.run_search`, print."""

import argparse
import sys

from recbole_beta.config import convert_values, given_keys, split_key_values
from recbole_beta.errors import RecBoleBetaError, fail
from recbole_beta.tuning.search import ALGOS, ENGINES, run_search
from recbole_beta.tuning.space import TuningError
from recbole_beta.tuning.trials import KEEP_CHECKPOINTS


class _Renamed(argparse.Action):
    """An option's earlier name: it still sets the option, and says once, on stderr, what it is called now."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"recbole-beta: warning: {option_string} is deprecated: use --{self.dest} (the same for sweeps)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


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
    parser.add_argument("--cpus_per_run", type=float, default=None,
                        help="ray: CPUs each trial reserves, and its torch threads (default 1)")
    parser.add_argument("--gpus_per_run", type=float, default=None, help="ray: GPUs each trial reserves (default 0)")
    parser.add_argument("--cpus_per_trial", type=float, dest="cpus_per_run", action=_Renamed,
                        help="deprecated: --cpus_per_run")
    parser.add_argument("--gpus_per_trial", type=float, dest="gpus_per_run", action=_Renamed,
                        help="deprecated: --gpus_per_run")
    parser.add_argument("--plugins", nargs="+", default=(), metavar="MODULE",
                        help="modules to import in this process and in every trial's worker (a strategy or a model "
                        "of your own registers itself as its module is imported)")
    parser.add_argument("--search_seed", type=int, default=None, help="seed of the search itself (default: random)")
    parser.add_argument("--keep_checkpoints", default="best", choices=KEEP_CHECKPOINTS,
                        help="best (default: only the best trial's), all or none")
    return parser


def _fixed_from_argv(unknown):
    """The other ``--key=value`` arguments as fixed config keys, converted as RecBole's Config converts
    its command line (``_load_cmd_line`` then ``_convert_config_dict``)."""
    pairs, others = split_key_values(unknown)
    if others:
        raise TuningError(f"unrecognized argument {others[0]!r}: config keys are given as --key=value")
    return convert_values(given_keys(pairs))


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
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            plugins=args.plugins,
            seed=args.search_seed,
            keep_checkpoints=args.keep_checkpoints,
        )
    except RecBoleBetaError as error:
        return fail(error)
    print(f"trials: {best['n_trials']} ({best['n_failed']} failed) in {best['seconds']:.1f} s")
    print(f"best params (trial {best['trial']}): {best['params']}")
    print(f"best valid: {best['best_valid_result']}")
    print(f"test result: {best['test_result']}")
    print(f"results: {best['output_dir']} (trials.jsonl, trials.csv, best.json, trials.png)")
    return 0
