"""The shape of a sweep spec as a JSON Schema, and its refusals as one line naming the path.

Which top-level fields there are, and the type of each field and of each model entry. A value of the wrong
shape is refused in one line naming its path (``models[2].config``, ``seeds[1]``,
``equivalence_margin.NDCG@100``); what the values must be (seeds >= 1, known config keys, folds
within ``heldout_folds``, ...) is checked afterwards by :mod:`recbole_beta.experiments.spec` and
:mod:`recbole_beta.experiments.tuning_spec`. Each property's ``expect`` is what the message asks for."""

import jsonschema

NUMBER = {"type": "number"}
INTEGER = {"type": "integer", "expect": "an integer"}
MAPPING = {"type": ["object", "null"], "expect": "a mapping of config keys to values"}
MAPPING_ITEM = {"type": "object", "expect": "a mapping of config keys to values"}

MODEL_ENTRY = {
    "type": "object",
    "required": ["model"],
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "expect": "a model name"},
        "label": {"type": ["string", "number"], "expect": "a label (a string)"},
        "config": MAPPING,
        "search": {"type": ["string", "object"], "expect": "a params file or a mapping of config keys to "
                                                           "expressions"},
    },
}

SCHEMA = {
    "type": "object",
    "required": ["dataset", "models"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": ["string", "number"], "expect": "a name (a string)"},
        "dataset": {"type": "string", "expect": "a dataset name, e.g. ml-100k"},
        "seeds": {"anyOf": [{"type": "integer"}, {"type": "array", "items": INTEGER}],
                  "expect": "a number of seeds >= 1 or a non-empty list of integers"},
        "models": {"type": "array", "items": {"anyOf": [{"type": "string"}, MODEL_ENTRY],
                                             "expect": "a model name or a {model, label, config, search} mapping"},
                   "expect": "a non-empty list of model names or {model, label, config} entries"},
        "config": MAPPING,
        "config_files": {"type": ["array", "null"], "items": {"type": "string", "expect": "a path (a string)"},
                         "expect": "a list of config file paths"},
        "grid": {"type": ["object", "null"],
                 "additionalProperties": {"type": "array", "expect": "a non-empty list of values"},
                 "expect": "a mapping of config keys to non-empty lists of values"},
        "cells": {"type": ["array", "null"], "items": MAPPING_ITEM,
                  "expect": "a non-empty list of mappings of config keys to values"},
        "reference": {"type": ["string", "null"], "expect": "a model label"},
        "activity_quantiles": {"type": "array", "items": {**NUMBER, "expect": "a number in (0, 1)"},
                               "expect": "increasing numbers in (0, 1)"},
        "folds": {"anyOf": [{"const": "all"}, {"type": "null"}, {"type": "array", "items": INTEGER}],
                  "expect": "'all' or a list of distinct fold numbers"},
        "equivalence_margin": {"type": ["object", "null"],
                               "additionalProperties": {**NUMBER, "expect": "a finite number > 0"},
                               "expect": "a mapping of metrics to margins, e.g. {NDCG@100: 0.005}"},
        "plan": {"type": ["object", "null"], "required": ["pilot"], "additionalProperties": False,
                 "properties": {"pilot": {"type": "string", "expect": "a sweep folder"},
                                "margin": {"anyOf": [NUMBER, {"type": "object", "additionalProperties": NUMBER}],
                                           "expect": "a number > 0 or {metric: number}"},
                                "power": {**NUMBER, "expect": "a number in (0, 1)"}},
                 "expect": "{pilot: SWEEP_DIR, margin: M, power: P}"},
        "plugins": {"type": ["array", "null"], "items": {"type": "string", "expect": "a module name"},
                    "expect": "a list of module names (my_package.strategies)"},
        "tuning": {"type": ["object", "null"],
                   "properties": {"algo": {"type": "string", "expect": "random, tpe or exhaustive"},
                                  "max_evals": {"type": "integer", "expect": "an integer >= 1"},
                                  "seed": {"type": "integer", "expect": "an integer >= 0"},
                                  "config": MAPPING},
                   "expect": "{algo: random, max_evals: N, seed: S}"},
    },
}

# a spec given as a mapping (not YAML) may hold tuples where YAML holds lists
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "array", lambda _checker, value: isinstance(value, (list, tuple)))
_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)(SCHEMA)


def shape_error(raw):
    """The first value of ``raw`` (a mapping) of the wrong shape, as one line naming its path; None: none."""
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(raw))
    if error is None:
        return None
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(str(key) for key in error.instance if key not in error.schema.get("properties", {}))
        return f"{_path(path) or 'spec'}: unknown fields {extra}; allowed: {allowed}"
    if error.validator == "required":
        missing = next(key for key in error.validator_value if key not in error.instance)
        expect = error.schema["properties"][missing].get("expect", "a value")
        return f"{_path([*path, missing])} is missing: give {expect}"
    return f"{_path(path) or 'spec'}={error.instance!r} is not allowed: give {_expect(error)}"


def _expect(error):
    """What the schema asks for where ``error`` is: the nearest ``expect`` up from the failed subschema."""
    while error is not None:
        if "expect" in error.schema:
            return error.schema["expect"]
        error = error.parent
    return "a value of another type"


def _path(parts):
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
