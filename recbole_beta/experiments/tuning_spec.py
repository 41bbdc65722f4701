"""The spec of a tuned sweep: its ``tuning`` block and its models' ``search`` entries, checked; the points drawn.

A spec's top-level ``tuning: {algo: random | bayes | exhaustive, max_evals: N, seed: S, config: {...}}`` sets
one budget for every tuned model; a model entry's ``search`` maps config keys to RecBole's params-file
expressions (``choice [...]``, ``uniform a,b``, ``loguniform a,b``, ``quniform a,b,q``) or names a params file.
``tuning.config`` is laid over the trials' config only (an epoch cap, say).

:func:`parse_tuning` checks both before any trial (one line, :class:`TuningSpecError`, which the spec's check
raises as its own SpecError): the block's fields, and each search's keys (ones the model reads, none fixed in
its config nor by the study (the split, the data, the metric), values the model accepts at the ends of the space
(as the spec configures it); every key a ``choice`` for exhaustive; the held-out-user protocol).
:func:`space_of` reads a model's space back from ``spec.tuning``; :func:`draw_points` draws the points of a
random or exhaustive search from the seed up front. The searches themselves run in
:mod:`recbole_beta.experiments.tuned`.
"""

from pathlib import Path

import numpy as np
import yaml

from recbole_beta.config import known_keys
from recbole_beta.config_checks import check_values
from recbole_beta.defaults import model_defaults, value_checks
from recbole_beta.errors import ConfigError, RecBoleBetaError
from recbole_beta.runs.training import driver_config
from recbole_beta.tuning.space import ParamsFileError, SearchSpace, parse_params_line, read_params_file

ALGOS = ("random", "bayes", "exhaustive")
TUNING_FIELDS = ("algo", "max_evals", "seed", "config")


class TuningSpecError(RecBoleBetaError, ValueError):
    """A spec's ``tuning`` or a model's ``search`` that cannot run (one line); the spec's check raises it as
    its own SpecError."""


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


#: keys a search must not move: they decide the split (the users a search validates on and the study tests
#: on), the data, or the score every trial is ranked by
FIXED_BY_THE_STUDY = frozenset({
    "model", "dataset", "seed", "fold", "eval_protocol", "heldout_users", "heldout_ratio", "heldout_folds",
    "split_seed", "eval_args", "benchmark_filename", "data_path", "val_interval", "user_inter_num_interval",
    "item_inter_num_interval", "load_col", "metrics", "topk", "valid_metric", "valid_metric_bigger",
})


def keys_the_model_reads(model_class, name):
    """The config keys ``model_class`` (run as ``name``) reads: those of its property files, RecBole's for each of
    RecBole's classes it is built on and the plugin's, and what properties/checks.yaml lists for it; with
    RecBole's training keys (learning_rate, train_batch_size, ...) unless it is fitted without gradients (EASE,
    ItemKNN, SLIMElastic: ModelType.TRADITIONAL). None for a model no property file describes (one of your own):
    its keys are not known here."""
    import recbole
    from recbole.utils import ModelType, training_arguments

    folder = Path(recbole.__file__).resolve().parent / "properties" / "model"
    files = [folder / f"{name}.yaml"] + [folder / f"{cls.__name__}.yaml" for cls in model_class.__mro__
                                         if cls.__module__.startswith("recbole.model.")]
    keys = set(model_defaults(model_class))
    for file in files:
        if file.is_file():
            keys.update(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    if not keys:
        return None
    keys.update(value_checks()["models"].get(name) or {})
    if getattr(model_class, "type", None) != ModelType.TRADITIONAL:
        keys.update(training_arguments)
    return keys


def _check_space(spec, label, model, config, space, tuning):
    """What a model's search must be: under the held-out-user protocol; keys the model reads and the study does
    not fix; none fixed in its config; values the model accepts at the ends; a grid for exhaustive."""
    where = f"models: {label}: search"
    built = driver_config(model, spec.dataset, spec.config_files, {**spec.config, **config, **tuning["config"]})
    read = built.final_config_dict
    if read["eval_protocol"] != "strong":
        raise TuningSpecError(f"{where}: tuning needs eval_protocol: strong (a search is scored on held-out "
                              "validation users); under eval_protocol={!r} the validation interactions are the "
                              "test users' own".format(read["eval_protocol"]))
    reads = keys_the_model_reads(built.model_class, model)
    for param in space.params:
        if param.name in FIXED_BY_THE_STUDY:
            raise TuningSpecError(f"{where}: {param.name} cannot be searched: the study fixes it (it decides the "
                                  "split, the data or the score every trial is ranked by)")
        if param.name not in (read if reads is None else reads):
            raise TuningSpecError(f"{where}: {model} does not read {param.name!r}; search keys of its own config"
                                  + ("" if reads is None else f" ({', '.join(sorted(reads - FIXED_BY_THE_STUDY))})"))
        if param.name in config:
            raise TuningSpecError(f"{where}: {param.name} is searched and also fixed in the model's config "
                                  f"({param.name}={config[param.name]!r}); drop one of them")
        try:
            extremes = param.extremes()  # the values the space reaches at its ends, as the model checks them
        except ParamsFileError as error:
            raise TuningSpecError(f"{where}: {error}") from None
        for value in extremes:
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
