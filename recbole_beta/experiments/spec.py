"""Sweep specifications: which models, settings and seeds to run, read from YAML and checked first.

A spec names a dataset, the seeds and the models, and optionally a grid (every combination) or
a list of cells of config keys, each run for every model and seed::

    dataset: ml-100k
    seeds: [2020, 2021, 2022]
    config: {epochs: 100}                 # for every run
    config_files: [my.yaml]               # optional
    models:
      - AnnealedBetaMultVAE
      - EASE
      - {model: ScaledBetaMultVAE, label: Scaled-g0.002, config: {gamma: 0.002}}
    reference: AnnealedBetaMultVAE        # label the significance tests compare against
    activity_quantiles: [0.25, 0.5, 0.75] # bucket edges for the per-activity breakdown
    plugins: [my_package.strategies]      # modules imported here and in every worker (your own strategies, models)
    grid:                                 # ablation: every combination, for every model
      activation: [tanh, relu]
      latent_dimension: [64, 128]

Under cross-validated held-out users (``config: {eval_protocol: strong, heldout_folds: 5}``),
``folds: all`` (or a list of fold numbers) runs every fold x seed x model; the report pools the folds,
each user tested once. ``equivalence_margin`` maps a metric to the margin within which two methods
count as equivalent (``{NDCG@100: 0.005}``); the report gives each comparison's TOST verdict.
"""

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from recbole.evaluator import register
from recbole.evaluator.base_metric import TopkMetric

from recbole_beta.config import closest_known_key, known_keys
from recbole_beta.config_checks import check_values
from recbole_beta.defaults import properties_dir
from recbole_beta.errors import ConfigError, RecBoleBetaError
from recbole_beta.experiments.spec_schema import shape_error
from recbole_beta.experiments.tuning_spec import TuningSpecError, parse_tuning
from recbole_beta.metrics import register_metrics
from recbole_beta.registry import get_model
from recbole_beta.runs.training import driver_config
from recbole_beta.runs.worker import parse_plugins


class SpecError(RecBoleBetaError, ValueError):
    """A sweep spec that cannot run; the message is one line naming the problem."""


def check_keys(keys, where):
    for key in keys:
        if key not in known_keys():
            close = closest_known_key(key)
            hint = f"; did you mean {close!r}?" if close else ""
            raise SpecError(f"{where}: unknown config key {key!r}{hint}")


@dataclass(frozen=True)
class Run:
    """One training run of a sweep."""

    label: str
    model: str
    seed: int
    cell: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    #: the test fold under cross-validated held-out users (also in ``config``); None: one split
    fold: int = None

    @property
    def run_id(self):
        cell = "-".join(f"{k}={_short(v)}" for k, v in sorted(self.cell.items()))
        digest = hashlib.sha1(json.dumps([self.label, self.cell, self.config], sort_keys=True, default=str).encode())
        fold = f"fold{self.fold}" if self.fold is not None else ""
        name = "__".join(p for p in (self.label, cell, fold, f"seed{self.seed}") if p)
        return f"{_slug(name)[:120]}__{digest.hexdigest()[:8]}"

    @property
    def group(self):
        """The label plus the cell: what seeds are averaged over."""
        if not self.cell:
            return self.label
        return self.label + " [" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.cell.items())) + "]"


def _short(value):
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def _slug(text):
    return re.sub(r"[^A-Za-z0-9_.=,@+-]+", "_", text)


@dataclass
class Spec:
    dataset: str
    seeds: list
    models: list  # [(label, model, config)]
    config: dict = field(default_factory=dict)
    config_files: list = field(default_factory=list)
    cells: list = field(default_factory=lambda: [{}])
    reference: str = None
    activity_quantiles: list = field(default_factory=lambda: [0.25, 0.5, 0.75])
    name: str = "sweep"
    #: the test folds to run (cross-validated held-out users); None: the one split
    folds: list = None
    #: metric (lower-case, as RecBole reports it) -> equivalence margin
    equivalence_margin: dict = field(default_factory=dict)
    #: the seed plan the sweep was run under ({pilot, margin, power}), repeated by the report; None: none
    plan: dict = None
    #: modules imported in the driver and in every worker before a run (strategies and models of your own)
    plugins: tuple = ()
    #: the tuned sweep's searches (:mod:`recbole_beta.experiments.tuning_spec`); None: no model is tuned
    tuning: dict = None

    def runs(self):
        """Every run: model by model, cell by cell, seed by seed; with folds, seed by seed first, then fold by
        fold, so that a sweep stopped part-way has tested every user (all folds) of every model with its first
        seeds: a smaller study of the same users, whose run variance each fold already estimates from two seeds
        on (fold by fold first, it would hold some folds' users only)."""
        if self.folds is None:
            return [
                Run(label=label, model=model, seed=seed, cell=dict(cell), config={**self.config, **config, **cell})
                for (label, model, config), cell, seed in itertools.product(self.models, self.cells, self.seeds)
            ]
        return [
            Run(label=label, model=model, seed=seed, cell=dict(cell), fold=fold,
                config={**self.config, **config, **cell, "fold": fold})
            for seed, fold, (label, model, config), cell in itertools.product(self.seeds, self.folds, self.models,
                                                                              self.cells)
        ]

    def to_dict(self):
        return {
            "name": self.name,
            "dataset": self.dataset,
            "seeds": self.seeds,
            "models": [{"label": label, "model": model, "config": config,
                        **({"search": self.tuning["search"][label]} if label in (self.tuning or {}).get("search", {})
                           else {})} for label, model, config in self.models],
            "config": self.config,
            "config_files": self.config_files,
            "cells": self.cells,
            "reference": self.reference,
            "activity_quantiles": self.activity_quantiles,
            **({"folds": self.folds} if self.folds is not None else {}),
            **({"equivalence_margin": self.equivalence_margin} if self.equivalence_margin else {}),
            **({"plan": self.plan} if self.plan else {}),
            **({"plugins": list(self.plugins)} if self.plugins else {}),
            **({"tuning": {k: v for k, v in self.tuning.items() if k != "search"}} if self.tuning else {}),
        }


def _seeds(value):
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SpecError(f"seeds={value} is not allowed: give a number of seeds >= 1 or a list of seeds")
        return list(range(2020, 2020 + value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        if len(set(value)) != len(value):
            raise SpecError(f"seeds={value} is not allowed: seeds repeat")
        return value
    raise SpecError(f"seeds={value!r} is not allowed: give a number of seeds >= 1 or a non-empty list of integers")


def _models(entries):
    if not isinstance(entries, list) or not entries:
        raise SpecError("models: give a non-empty list of model names or {model, label, config} entries")
    models = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"model": entry}
        get_model(entry["model"])  # UnknownModelError with close names
        config = entry.get("config") or {}
        check_keys(config, f"models: {entry['model']}")
        models.append((str(entry.get("label", entry["model"])), entry["model"], config))
    labels = [label for label, _, _ in models]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise SpecError(f"models: labels {duplicated} repeat; give each entry its own 'label'")
    return models


def _cells(spec):
    grid, cells = spec.get("grid"), spec.get("cells")
    if grid is not None and cells is not None:
        raise SpecError("give either 'grid' or 'cells', not both")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise SpecError("grid: give a mapping of config keys to non-empty lists of values")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"grid: {key!r} has no values; give a non-empty list")
        check_keys(grid, "grid")
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    if cells is not None:
        if not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells):
            raise SpecError("cells: give a non-empty list of mappings of config keys to values")
        for cell in cells:
            check_keys(cell, "cells")
        return cells
    return [{}]


def load_spec(source, overrides=None):
    """Read and check a spec (a path to YAML, or a mapping); raises SpecError before anything runs."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise SpecError(f"spec file {path} is not valid YAML: {' '.join(str(error).split())}") from None
        name = path.stem
    else:
        raw, name = source, "sweep"
    if not isinstance(raw, dict):
        raise SpecError("a spec is a mapping with at least 'dataset' and 'models'")
    raw = {**raw, **(overrides or {})}
    shape = shape_error(raw)  # the fields and the type of each (the schema); their values are checked below
    if shape:
        raise SpecError(shape)
    plugins = parse_plugins(raw.get("plugins"))  # imported first: the models and strategies they register are checked
    config = raw.get("config") or {}
    check_keys(config, "config")
    files = raw.get("config_files") or []
    for file in files:
        if not Path(file).is_file():
            raise SpecError(f"config_files: {file} does not exist")
    models = _models(raw.get("models"))
    quantiles = raw.get("activity_quantiles", [0.25, 0.5, 0.75])
    if not (isinstance(quantiles, list) and all(isinstance(q, (int, float)) and 0 < q < 1 for q in quantiles)
            and quantiles == sorted(set(quantiles))):
        raise SpecError(f"activity_quantiles={quantiles!r} is not allowed: give increasing numbers in (0, 1)")
    spec = Spec(
        dataset=raw["dataset"],
        seeds=_seeds(raw.get("seeds", 1)),
        models=models,
        config=config,
        config_files=list(files),
        cells=_cells(raw),
        reference=raw.get("reference"),
        activity_quantiles=list(quantiles),
        name=str(raw.get("name", name)),
        folds=_folds(raw.get("folds"), config, files, models),
        equivalence_margin=_margins(raw.get("equivalence_margin"), config, files),
        plan=_plan(raw.get("plan")),
        plugins=plugins,
    )
    _check_fold_given_once(raw.get("folds"), spec)
    _check_runs(spec)
    spec.tuning = _tuning(raw, spec)
    labels = [label for label, _, _ in models]
    if spec.reference is not None and spec.reference not in labels:
        raise SpecError(f"reference={spec.reference!r} is not one of the model labels {labels}")
    return spec


def _tuning(raw, spec):
    try:
        return parse_tuning(raw, spec)
    except TuningSpecError as error:
        raise SpecError(str(error)) from None


def _check_runs(spec):
    """Build each run's config as the run will (the plugin's Config checks every value as it is built, before
    any data is read), so that a spec passing its check does not then fail in every run. One config per model
    and cell: the seeds and folds vary one key each (folds are checked by :func:`_folds`, seeds here)."""
    checked = set()
    for run in spec.runs():
        same = json.dumps([run.label, run.cell], sort_keys=True, default=str)
        if same in checked:
            continue
        checked.add(same)
        try:
            driver_config(run.model, spec.dataset, spec.config_files, {**run.config, "seed": run.seed})
        except RecBoleBetaError as error:
            raise SpecError(f"{_source(spec, run, getattr(error, 'key', None))}: {error}") from None
    for seed in spec.seeds:
        try:
            check_values({"seed": seed})
        except ConfigError as error:
            raise SpecError(f"seeds: {error}") from None


def _source(spec, run, key):
    """Where a refused ``key`` of ``run`` comes from, as the spec names it: ``config`` when the spec's config
    alone gives it, else the run's model entry and cell (a config file, or a key the value depends on)."""
    own = next(config for label, _, config in spec.models if label == run.label)
    if key is not None and key in spec.config and key not in own and key not in run.cell:
        return "config"
    return f"models: {run.group}"


def _check_fold_given_once(folds, spec):
    """With ``folds``, each run's test fold is set from it: a ``fold`` given in the spec's config, a model's,
    a cell or a config file would be overridden without a word."""
    if spec.folds is None:
        return
    sources = [("config", spec.config), *((f"models: {label}", config) for label, _, config in spec.models),
               *(("grid/cells", cell) for cell in spec.cells),
               ("config_files", _settings({}, spec.config_files, ("fold",)))]
    for where, config in sources:
        if config.get("fold") is not None:
            raise SpecError(f"{where}: fold={config['fold']!r} is not allowed with folds={folds!r}: each run's test "
                            "fold comes from folds; drop fold")


def _settings(config, files, keys):
    """``keys`` as the runs will see them, without reading data: the spec's config over its config files
    over the plugin's defaults (``properties/overall.yaml``)."""
    found = yaml.safe_load((properties_dir() / "overall.yaml").read_text(encoding="utf-8")) or {}
    for file in files:
        try:
            content = yaml.safe_load(Path(file).read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise SpecError(f"config_files: {file} is not valid YAML: {' '.join(str(error).split())}") from None
        found.update(content if isinstance(content, dict) else {})
    found.update(config)
    return {key: found.get(key) for key in keys}


def _folds(value, config, files, models=()):
    """The test folds a spec runs: ``all`` (every fold of ``heldout_folds``) or a list of fold numbers."""
    settings = _settings(config, files, ("eval_protocol", "heldout_folds"))
    if value is None:
        given = [settings["heldout_folds"]] + [c.get("heldout_folds") for _, _, c in models]
        if any(given) and settings["eval_protocol"] == "strong":  # else every run would test fold 0 alone
            raise SpecError("heldout_folds is set but the spec has no 'folds': give folds: all (or a list, e.g. "
                            "[0]) so that each fold is run and the report pools them")
        return None
    k = settings["heldout_folds"]
    if settings["eval_protocol"] != "strong" or not isinstance(k, int) or isinstance(k, bool) or k < 3:
        raise SpecError(f"folds={value!r} needs config keys eval_protocol: strong and heldout_folds: K (an integer "
                        f">= 3); the spec gives eval_protocol={settings['eval_protocol']!r}, heldout_folds={k!r}")
    if value == "all":
        return list(range(k))
    if (isinstance(value, list) and value and len(set(value)) == len(value)
            and all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < k for f in value)):
        return value
    raise SpecError(f"folds={value!r} is not allowed: give 'all' or a list of distinct fold numbers in [0, {k})")


def _plan(value):
    """``plan``: the seed plan a sweep was run under, ``{pilot: SWEEP_DIR, margin: {metric: M} or M, power: P}``
    (what ``python -m recbole_beta.experiments plan`` was given); recorded, not acted on: the seeds are the
    spec's own, fixed before the runs."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"pilot", "margin", "power"} or "pilot" not in value:
        raise SpecError(f"plan={value!r} is not allowed: give {{pilot: SWEEP_DIR, margin: M, power: P}}")
    margins = value.get("margin")
    numbers = list(margins.values()) if isinstance(margins, dict) else [margins]
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0
               for m in numbers):
        raise SpecError(f"plan: margin={margins!r} is not allowed: give a number > 0 or {{metric: number}}")
    power = value.get("power", 0.8)
    if not (isinstance(power, (int, float)) and not isinstance(power, bool) and 0 < power < 1):
        raise SpecError(f"plan: power={power!r} is not allowed: give a number in (0, 1)")
    return {"pilot": str(value["pilot"]), "margin": margins, "power": float(power)}


def _margins(value, config, files):
    """``equivalence_margin``: metric -> margin, each metric one the runs compute (a name of ``metrics`` at a
    k of ``topk``), each margin a finite number > 0; keys lower-cased as RecBole reports metrics."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not value:
        raise SpecError("equivalence_margin: give a mapping of metrics to margins, e.g. {NDCG@100: 0.005}")
    settings = _settings(config, files, ("metrics", "topk"))
    metrics = settings["metrics"] or []
    metrics = [metrics] if isinstance(metrics, str) else metrics
    topk = settings["topk"] or []
    topk = [topk] if isinstance(topk, int) else topk
    # per user, the runs keep top-k metrics only (what the paired tests compare)
    register_metrics()  # the plugin's metrics (TruncatedRecall), before a Config registers them
    computed = {f"{m.lower()}@{k}" for m in metrics for k in topk
                if isinstance(register.metrics_dict.get(m.lower()), type)
                and issubclass(register.metrics_dict[m.lower()], TopkMetric)}
    margins = {}
    for metric, margin in value.items():
        if str(metric).lower() not in computed:
            raise SpecError(f"equivalence_margin: {metric} is not a per-user top-k metric the runs compute; they "
                            f"compute {', '.join(sorted(computed))} (config keys metrics and topk)")
        if (not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin)
                or margin <= 0):
            raise SpecError(f"equivalence_margin: {metric}={margin!r} is not allowed: give a finite number > 0")
        margins[str(metric).lower()] = float(margin)
    return margins
