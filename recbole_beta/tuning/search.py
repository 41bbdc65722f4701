"""One search: every check before any trial, then the engine's run and the results files.

:func:`prepare_search` returns a checked :class:`Search`; :func:`run_search` runs it on either engine."""

import os
import sys
import time
from dataclasses import dataclass, field

from recbole.utils import get_local_time

from recbole_beta.config import known_keys, unknown_key_warnings
from recbole_beta.errors import ConfigError
from recbole_beta.files import plain
from recbole_beta.registry import get_model, is_plugin_vae
from recbole_beta.runs.engines import Engine, EngineError
from recbole_beta.runs.training import absolute_data_path, driver_config
from recbole_beta.runs.worker import import_plugins
from recbole_beta.tuning.space import ParamsFileError, SearchSpace, TuningError, default_params_file, read_params_file
from recbole_beta.tuning.trials import KEEP_CHECKPOINTS, TrialLog

ALGOS = ("exhaustive", "random", "bayes")
ENGINES = ("hyperopt", "ray")


@dataclass(frozen=True)
class RayOptions:
    """What only the Ray engine reads."""

    cpus: int = None  # CPUs of the local instance started for the search (None: all)
    address: str = None  # an existing cluster's address instead (auto, host:6379)
    cpus_per_run: float = 1  # what each trial reserves (and its torch threads)
    gpus_per_run: float = 0
    verbose: int = 1  # Tune's console output (0 silent, 1 status updates)


@dataclass(frozen=True)
class Search:
    """A checked search: what :func:`prepare_search` returns and an engine runs."""

    model: str  # the model class's own name
    dataset: str
    space: SearchSpace
    algo: str  # one of ALGOS
    engine: str  # one of ENGINES
    max_evals: int  # exhaustive: the grid's size
    early_stop: int  # the patience (trials.Patience); 0: never
    config_file_list: list  # absolute paths, or None
    fixed: dict  # the fixed keys, below the trial's parameters (a relative data_path made absolute)
    bigger: bool  # the config's valid_metric_bigger
    valid_metric: str
    write_results: bool  # results_dir is set: each trial writes its result JSON
    keep_checkpoints: str = "best"
    seed: int = None  # the search's seed (which points are tried), not the training seed
    ray: RayOptions = field(default_factory=RayOptions)
    plugins: tuple = ()  # modules every trial's worker imports (strategies and models of your own)

    def __getitem__(self, key):
        """``search["space"]``: prepare_search returned a dict before this class, and reading by key still works."""
        return getattr(self, key)

    def summary(self):
        """What best.json says of the search itself."""
        return {
            "model": self.model,
            "dataset": self.dataset,
            "engine": self.engine,
            "algo": self.algo,
            "params_file": os.path.abspath(self.space.file),
            "space": self.space.to_dict()["params"],
            "valid_metric": self.valid_metric,
            "valid_score_bigger": self.bigger,
            "max_evals": self.max_evals,
            "early_stop": self.early_stop,
            "seed": self.seed,
            "config_files": self.config_file_list,
            "fixed": plain(self.fixed),
            **({"plugins": list(self.plugins)} if self.plugins else {}),
        }


def _check_values(space, base, model_class):
    """Every value the space can reach at its ends, checked by the plugin's model as a config is built
    (``validate_config``; one key at a time, the others at their fixed values)."""
    if not is_plugin_vae(model_class):
        return  # RecBole's models read their keys as they are built: nothing to check before
    for param in space.params:
        for value in param.extremes():
            value = param.convert(value)
            missing = param.name not in base.final_config_dict
            old = base.final_config_dict.get(param.name)
            base.final_config_dict[param.name] = value
            try:
                model_class.validate_config(base)
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
                   cpus_per_trial=None, gpus_per_trial=None, keep_checkpoints="best", seed=None, verbose=1,
                   cpus_per_run=None, gpus_per_run=None, plugins=()):
    """Check everything a search needs, before any trial runs; return the :class:`Search`.

    The arguments are :func:`run_search`'s. Raises :class:`ParamsFileError` / :class:`TuningError` (or
    the plugin's ConfigError, UnknownModelError, DatasetNotFoundError for the fixed settings, a PluginError
    for a plugin that cannot be imported), each one line.
    """
    from recbole_beta.quick_start import check_dataset  # quick_start imports torch and the models

    _check_options(algo, engine, keep_checkpoints, max_evals, early_stop)
    resources = _checked_resources(engine, cpus, ray_address, cpus_per_run, gpus_per_run, cpus_per_trial,
                                   gpus_per_trial)
    plugins = tuple(plugins or ())
    import_plugins(plugins, "--plugins")  # a strategy or model of your own registers itself as it is imported
    model_class = get_model(model)  # UnknownModelError with close names
    model = model_class.__name__
    params_file = _params_file(model, params_file)
    fixed = dict(fixed or {})
    config_file_list = _config_files(config_file_list)

    base = driver_config(model, dataset, config_file_list, fixed)
    check_dataset(base)
    data_path = absolute_data_path(base)
    if data_path is not None:  # Ray trials work in their own folders
        fixed["data_path"] = data_path
    space = _read_space(params_file, base, fixed)
    _check_values(space, base, model_class)
    return Search(
        model=model,
        dataset=base["dataset"],
        space=space,
        algo=algo,
        engine=engine,
        max_evals=_max_evals(algo, space, max_evals),
        early_stop=int(early_stop or 0),
        config_file_list=config_file_list,
        fixed=fixed,
        bigger=bool(base["valid_metric_bigger"]),
        valid_metric=base["valid_metric"],
        write_results=bool(base["results_dir"]),
        keep_checkpoints=keep_checkpoints,
        seed=seed,
        ray=RayOptions(cpus=resources.cpus, address=resources.address, cpus_per_run=resources.cpus_per_run,
                       gpus_per_run=resources.gpus_per_run, verbose=verbose),
        plugins=plugins,
    )


def _check_options(algo, engine, keep_checkpoints, max_evals, early_stop):
    """The search's own options, each against what it allows (TuningError, one line)."""
    if algo not in ALGOS:
        raise TuningError(f"algo={algo!r} is not allowed: must be one of {', '.join(ALGOS)}")
    if engine not in ENGINES:
        raise TuningError(f"engine={engine!r} is not allowed: must be one of {', '.join(ENGINES)}")
    if keep_checkpoints not in KEEP_CHECKPOINTS:
        raise TuningError(f"keep_checkpoints={keep_checkpoints!r} is not allowed: must be one of "
                          f"{', '.join(KEEP_CHECKPOINTS)}")
    for key, value, minimum in (("max_evals", max_evals, 1), ("early_stop", early_stop, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum):
            raise TuningError(f"{key}={value!r} is not allowed: must be a number >= {minimum}")


def _checked_resources(engine, cpus, ray_address, cpus_per_run, gpus_per_run, cpus_per_trial, gpus_per_trial):
    """The engine's resource options, checked as a sweep checks them (hyperopt runs its trials in this
    process); the earlier names (cpus_per_trial, gpus_per_trial) still work, and the messages name what was
    given."""
    unit = "trial" if cpus_per_run is None and gpus_per_run is None and (
        cpus_per_trial is not None or gpus_per_trial is not None) else "run"
    for new, old, value, earlier in (("cpus_per_run", "cpus_per_trial", cpus_per_run, cpus_per_trial),
                                     ("gpus_per_run", "gpus_per_trial", gpus_per_run, gpus_per_trial)):
        if value is not None and earlier is not None:
            raise TuningError(f"{new} and {old} are one option: give {new}")
    cpus_per_run = cpus_per_trial if cpus_per_run is None else cpus_per_run
    gpus_per_run = gpus_per_trial if gpus_per_run is None else gpus_per_run
    try:
        return Engine.checked("ray" if engine == "ray" else "local", cpus=cpus, address=ray_address,
                              cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, unit=unit)
    except EngineError as error:
        raise TuningError(str(error)) from None


def _params_file(model, params_file):
    """The params file to read: the one given, else the one the plugin ships for ``model`` (a class name)."""
    if params_file is None:
        params_file = default_params_file(model)
        if params_file is None:
            raise TuningError(
                f"no params file for {model}: the plugin ships one for its own models only "
                f"(properties/hyper/); give --params_file"
            )
    return os.fspath(params_file)


def _config_files(config_file_list):
    """The fixed config files as absolute paths (trials may work in other folders), each one there; or None."""
    config_file_list = [os.path.abspath(f) for f in (config_file_list or [])] or None
    for file in config_file_list or []:
        if not os.path.isfile(file):
            raise TuningError(f"config file {file} not found")
    return config_file_list


def _read_space(params_file, base, fixed):
    """The search space of ``params_file``: its keys known to RecBole, the plugin or ``base`` (the driver's
    config), none of them also ``fixed``; the unknown keys of the fixed settings warned about on stderr."""
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
    return space


def _max_evals(algo, space, max_evals):
    """How many trials: the grid's size for ``exhaustive`` (a smaller max_evals refused), else max_evals
    (default 20)."""
    if algo == "exhaustive":
        space.require_grid()
        size = space.grid_size()
        if max_evals is not None and max_evals < size:
            raise TuningError(
                f"--algo exhaustive runs all {size} combinations of {space.file}; max_evals={max_evals} is "
                f"fewer (leave it out, or use --algo random)"
            )
        return size
    return int(20 if max_evals is None else max_evals)


def run_search(model, dataset="ml-100k", params_file=None, algo="random", max_evals=None, early_stop=10,
               config_file_list=None, fixed=None, output_dir=None, engine="hyperopt", cpus=None,
               ray_address=None, cpus_per_trial=None, gpus_per_trial=None, seed=None, keep_checkpoints="best",
               verbose=1, cpus_per_run=None, gpus_per_run=None, plugins=()):
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
        cpus_per_run, gpus_per_run: ray: resources each trial reserves (default 1 CPU, no GPU); the CPUs are
            its torch threads too. ``cpus_per_trial``, ``gpus_per_trial``: their earlier names.
        seed (int): the search's random seed (which points are tried); the training seed is the
            config's ``seed``.
        keep_checkpoints (str): ``best`` (only the best trial's checkpoint is kept), ``all`` or ``none``.
        verbose (int): ray: Tune's console output (0 silent, 1 status updates).
        plugins (list of str): modules to import here and in every trial's worker before it runs (a
            strategy or a model of your own registers itself as its module is imported).
    """
    start = time.time()
    search = prepare_search(model, dataset, params_file, algo, max_evals, early_stop, config_file_list, fixed,
                            engine, cpus, ray_address, cpus_per_trial, gpus_per_trial, keep_checkpoints, seed,
                            verbose, cpus_per_run, gpus_per_run, plugins)
    output_dir = os.path.abspath(output_dir or os.path.join("hyper", f"{search.model}-{search.dataset}-"
                                                                       f"{get_local_time()}"))
    if os.path.exists(os.path.join(output_dir, "trials.jsonl")):
        raise TuningError(f"{output_dir} already holds a search (trials.jsonl): choose another --output_dir")
    os.makedirs(output_dir, exist_ok=True)
    log = TrialLog(output_dir, search.space, search.summary(), search.bigger, search.keep_checkpoints)
    if search.engine == "hyperopt":
        from recbole_beta.tuning.hyperopt_engine import run as run_engine
    else:  # ray is imported only for a Ray search: it takes seconds
        from recbole_beta.tuning.ray_engine import run as run_engine
    run_engine(search, log)

    best = log.finish(time.time() - start)
    if not log.records:
        raise TuningError(f"no trial ran (results in {output_dir})")
    if best.get("trial") is None:
        errors = [r.get("error") for r in log.records if r.get("error")]
        first = errors[0] if errors else "?"
        raise TuningError(f"all {len(log.records)} trials failed (see {log.jsonl}); the first: {first}")
    return {**best, "output_dir": output_dir, "trials": list(log.records)}
