"""The search space: a RecBole params file, read and checked, and its translation to either engine.

One line per key, ``<key> <distribution> <values>``, as RecBole's ``HyperTuning._build_space_from_file``
reads it; blank lines and ``#`` comments are skipped (RecBole's own reader fails on a comment of three
words or more). A bad file fails with one line, ``<file>:<line>: <problem>``.

The package's errors live here, at its bottom, so that every module of it can raise them.
"""

import ast
import difflib
import itertools
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
from recbole.config import Config as RecBoleConfig

from recbole_beta.config import known_keys, properties_dir
from recbole_beta.errors import RecBoleBetaError
from recbole_beta.files import require_file

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform")


class TuningError(RecBoleBetaError, ValueError):
    """A search that cannot run (bad options, no trial finished); the message is one line."""


class ParamsFileError(TuningError):
    """A params file that cannot be searched; the message is ``<file>:<line>: <problem>``."""


@dataclass(frozen=True)
class SearchParam:
    """One line of a params file.

    ``values`` holds the choice's values (as written: strings stay strings), ``(low, high)`` for
    ``uniform`` and ``loguniform`` (exponents, as RecBole and hyperopt take them), ``(low, high, q)``
    for ``quniform``.
    """

    name: str
    distribution: str
    values: tuple
    line: int = 0
    text: str = ""

    @property
    def integer(self):
        """A ``quniform`` on integers (bounds and step): its values are given to the model as ints."""
        return self.distribution == "quniform" and all(float(v).is_integer() for v in self.values)

    def hyperopt(self):
        """The line as HyperTuning builds it (``_build_space_from_file``)."""
        from hyperopt import hp

        if self.distribution == "choice":
            return hp.choice(self.name, list(self.values))
        if self.distribution == "uniform":
            return hp.uniform(self.name, *self.values)
        if self.distribution == "loguniform":
            return hp.loguniform(self.name, *self.values)
        return hp.quniform(self.name, *self.values)

    def ray(self, grid=False):
        """The same distribution in Ray Tune (whose loguniform takes the bounds, not their logs)."""
        from ray import tune

        if self.distribution == "choice":
            return tune.grid_search(list(self.values)) if grid else tune.choice(list(self.values))
        if self.distribution == "uniform":
            return tune.uniform(*self.values)
        if self.distribution == "loguniform":
            low, high = self.values
            return tune.loguniform(math.exp(low), math.exp(high))
        return tune.quniform(*self.values)

    def convert(self, value):
        """A sampled value as the config receives it: numpy to Python, integer quniform to int,
        strings through RecBole's own conversion (``'[600,200]'`` -> ``[600, 200]``, ``'True'`` -> True)."""
        if isinstance(value, np.generic):
            value = value.item()
        if self.integer and isinstance(value, (int, float)):
            return int(round(value))
        if isinstance(value, str):
            return RecBoleConfig._convert_config_dict(None, {self.name: value})[self.name]
        return value

    def extremes(self):
        """The values the distribution can reach at its ends (every value of a choice)."""
        if self.distribution in ("choice", "uniform"):
            return list(self.values)
        if self.distribution == "loguniform":
            if max(self.values) > math.log(sys.float_info.max):
                low, high = self.values
                raise ParamsFileError(f"{self.name}: loguniform {low:g},{high:g} reaches e^{high:g}, "
                                      "beyond a float: loguniform's bounds are natural logarithms (e.g. "
                                      "loguniform -9.21,-4.61 for 1e-4 .. 1e-2)")
            return [math.exp(v) for v in self.values]
        low, high, q = self.values
        return [round(low / q) * q, round(high / q) * q]


@dataclass
class SearchSpace:
    """The searched keys, in file order."""

    params: list
    file: str = "<params>"

    @property
    def names(self):
        return [p.name for p in self.params]

    def __getitem__(self, name):
        return next(p for p in self.params if p.name == name)

    def location(self, param):
        return f"{self.file}:{param.line}" if param.line else self.file

    def is_grid(self):
        return all(p.distribution == "choice" for p in self.params)

    def grid_size(self):
        return int(np.prod([len(p.values) for p in self.params]))

    def require_grid(self):
        for param in self.params:
            if param.distribution != "choice":
                raise ParamsFileError(
                    f"{self.location(param)}: --algo exhaustive searches a grid, so every line must be "
                    f"'choice'; {param.name} is '{param.distribution}' (use --algo random or bayes)"
                )

    def grid(self):
        """Every combination of a choice-only space, once each, as ``{name: value as written}``.

        In file order, the last line varying fastest (``itertools.product``). RecBole's
        ``exhaustive_search`` draws the combinations in a random order instead, and fails on hyperopt
        0.3 (``'RandomState' object has no attribute 'integers'``); no test or document relies on the order.
        """
        self.require_grid()
        for values in itertools.product(*(p.values for p in self.params)):
            yield dict(zip(self.names, values))

    def hyperopt_space(self):
        return {p.name: p.hyperopt() for p in self.params}

    def ray_space(self, grid=False):
        return {p.name: p.ray(grid=grid) for p in self.params}

    def convert(self, sampled):
        """Sampled values (hyperopt's or Ray's) as the config receives them, in file order."""
        return {p.name: p.convert(sampled[p.name]) for p in self.params if p.name in sampled}

    def to_dict(self):
        return {"file": self.file, "params": [{"name": p.name, "distribution": p.distribution,
                                                "values": list(p.values), "line": p.line} for p in self.params]}


# not RecBole's _build_space_from_file: hyperopt nodes only (no values for Ray/grid, no line numbers);
# skips tab-separated lines silently
def _numbers(text, count, where, name, distribution, example):
    parts = text.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise ParamsFileError(
            f"{where}: {name} {distribution} needs {count} comma-separated numbers "
            f"({example}), not {text!r}"
        )
    return numbers


def parse_params_line(text, where):
    """One line of a params file as a :class:`SearchParam` (None for blank and ``#`` comment lines).

    The line is split as RecBole's ``HyperTuning`` splits it: ``<key> <distribution> <values>``, the
    values' spaces removed.
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = stripped.split()
    if len(tokens) < 3:
        raise ParamsFileError(
            f"{where}: expected '<key> <distribution> <values>', e.g. 'learning_rate loguniform -9.2,-4.6', "
            f"not {stripped!r}"
        )
    name, distribution, value = tokens[0], tokens[1], "".join(tokens[2:])
    if distribution not in DISTRIBUTIONS:
        close = difflib.get_close_matches(distribution, DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParamsFileError(
            f"{where}: unknown distribution {distribution!r} for {name}{hint}; "
            f"use {', '.join(DISTRIBUTIONS[:-1])} or {DISTRIBUTIONS[-1]}"
        )
    if distribution == "choice":
        try:  # RecBole eval()s the list; a literal is enough for a params file and runs no code
            values = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values = None
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamsFileError(
                f"{where}: {name} choice needs a non-empty list of Python literals, e.g. "
                f"choice [0.1,0.5] or choice ['[600]','[600,200]'], not {value!r}"
            )
        seen = []  # a list, not a set: values may be unhashable
        for v in values:
            if v in seen:
                raise ParamsFileError(f"{where}: {name} choice lists {v!r} twice")
            seen.append(v)
        return SearchParam(name, distribution, tuple(values), 0, stripped)
    if distribution in ("uniform", "loguniform"):
        example = "low,high" + (", exponents: -9.2,-4.6 is 1e-4 .. 1e-2" if distribution == "loguniform" else "")
        low, high = _numbers(value, 2, where, name, distribution, example)
        if not low < high:
            raise ParamsFileError(f"{where}: {name} {distribution} needs low < high, not {value!r}")
        return SearchParam(name, distribution, (low, high), 0, stripped)
    low, high, q = _numbers(value, 3, where, name, distribution, "low,high,q, e.g. 1,8,1")
    if not low < high:
        raise ParamsFileError(f"{where}: {name} quniform needs low < high, not {value!r}")
    if not q > 0:
        raise ParamsFileError(f"{where}: {name} quniform needs a step q > 0, not {value!r}")
    return SearchParam(name, distribution, (low, high, q), 0, stripped)


def read_params_file(path, known=None):
    """Read and check a params file; return its :class:`SearchSpace` (raises :class:`ParamsFileError`).

    Args:
        path: the file.
        known: the config keys that may be searched; None: every key RecBole or the plugin knows
            (``recbole_beta.config.known_keys``).
    """
    path = os.fspath(path)
    require_file(path, lambda why: ParamsFileError(f"{path}: {why}"), missing="params file not found",
                 not_file="not a file (give a params file: one '<key> <distribution> <values>' a line)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsFileError(f"{path}: cannot read the params file: {error}") from None
    known = known_keys() if known is None else frozenset(known)
    params, lines_of = [], {}
    for number, text in enumerate(lines, start=1):
        where = f"{path}:{number}"
        param = parse_params_line(text, where)
        if param is None:
            continue
        if param.name in ("model", "dataset"):
            raise ParamsFileError(f"{where}: {param.name} cannot be searched: a search is one model on one dataset")
        if param.name not in known:
            close = difflib.get_close_matches(param.name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (keys of your own go in a config file first)"
            raise ParamsFileError(f"{where}: unknown config key {param.name!r}{hint}")
        if param.name in lines_of:
            raise ParamsFileError(f"{where}: {param.name} is already searched on line {lines_of[param.name]}")
        lines_of[param.name] = number
        params.append(SearchParam(param.name, param.distribution, param.values, number, param.text))
    if not params:
        raise ParamsFileError(
            f"{path}: no parameters to search: give one '<key> <distribution> <values>' a line, "
            f"e.g. 'learning_rate loguniform -9.2,-4.6'"
        )
    return SearchSpace(params, path)


def default_params_file(model):
    """``properties/hyper/<Model>.hyper`` if the plugin ships one for the model, else None."""
    path = properties_dir() / "hyper" / f"{model}.hyper"
    return path if path.is_file() else None
