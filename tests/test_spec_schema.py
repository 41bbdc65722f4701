"""The spec's shape is checked by a schema (recbole_beta/experiments/spec_schema.py): a value of the wrong type,
however deep, is refused in one line naming its path, before any semantic check or run."""

import pytest

from recbole_beta.experiments.spec import SpecError, load_spec


def spec(**changes):
    return {"dataset": "ml-100k", "seeds": [2020, 2021, 2022],
            "models": ["Pop", {"model": "EASE", "config": {"reg_weight": 10.0}}], **changes}


CASES = [
    ({"models": ["Pop", {"model": "EASE", "config": [1]}]},
     "models[1].config=[1] is not allowed: give a mapping of config keys to values"),
    ({"seeds": [2020, 2021, "x"]}, "seeds[2]='x' is not allowed: give an integer"),
    ({"activity_quantiles": "0.5"}, "activity_quantiles='0.5' is not allowed: give increasing numbers in (0, 1)"),
    ({"activity_quantiles": [0.25, None]}, "activity_quantiles[1]=None is not allowed: give a number in (0, 1)"),
    ({"colour": "red"}, "spec: unknown fields ['colour']; allowed: ["),
    ({"models": ["Pop", {"model": "EASE", "cfg": {}}]},
     "models[1]: unknown fields ['cfg']; allowed: ['config', 'label', 'model', 'search']"),
    ({"models": ["Pop", {"label": "E"}]}, "models[1].model is missing: give a model name"),
    ({"models": ["Pop", 3]}, "models[1]=3 is not allowed: give a model name or a {model, label, config, search}"),
    ({"tuning": {"algo": "random", "max_evals": "ten"}}, "tuning.max_evals='ten' is not allowed: give an integer"),
    ({"equivalence_margin": {"NDCG@100": "small"}},
     "equivalence_margin.NDCG@100='small' is not allowed: give a finite number > 0"),
    ({"plan": {"pilot": "out", "margin": {"ndcg@100": "x"}}},
     "plan.margin.ndcg@100='x' is not allowed: give a number > 0 or {metric: number}"),
    ({"grid": {"reg_weight": 10}}, "grid.reg_weight=10 is not allowed: give a non-empty list of values"),
    ({"cells": [{"reg_weight": 1}, 5]}, "cells[1]=5 is not allowed: give a mapping of config keys to values"),
    ({"folds": "some"}, "folds='some' is not allowed: give 'all' or a list of distinct fold numbers"),
    ({"config_files": ["a.yaml", 7]}, "config_files[1]=7 is not allowed: give a path (a string)"),
    ({"dataset": 100}, "dataset=100 is not allowed: give a dataset name, e.g. ml-100k"),
]


@pytest.mark.parametrize("changes, message", CASES, ids=[m.split("=")[0].split(":")[0] for _, m in CASES])
def test_a_value_of_the_wrong_shape_names_its_path_in_one_line(changes, message):
    with pytest.raises(SpecError) as caught:
        load_spec(spec(**changes))
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_field_is_named():
    raw = spec()
    del raw["dataset"]
    with pytest.raises(SpecError, match=r"^dataset is missing: give a dataset name"):
        load_spec(raw)


def test_the_value_checks_still_follow_the_shape():
    """Right shape, wrong value: the existing checks answer, as before."""
    with pytest.raises(SpecError, match=r"^seeds=0 is not allowed"):
        load_spec(spec(seeds=0))
    with pytest.raises(SpecError, match=r"^config: unknown config key 'epoch'; did you mean 'epochs'\?"):
        load_spec(spec(config={"epoch": 3}))
    assert [label for label, _, _ in load_spec(spec()).models] == ["Pop", "EASE"]
