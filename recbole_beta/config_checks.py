"""Each config value checked on its own against properties/checks.yaml, and each config file checked.

Every run's config is checked here as the plugin's Config is built, before any data is read: each key
properties/checks.yaml names for the run's model against its rule (a type, bounds, choices, a shape; ``metrics``
and ``valid_metric`` against other keys), a key given with no value, and each config file (readable, YAML, a
mapping). Each refusal is one line naming the key or the file and what it accepts.
"""

import difflib
import math
import operator
import os

import yaml
from recbole.evaluator import register
from recbole.utils import EvaluatorType

from recbole_beta import metrics
from recbole_beta.defaults import value_checks
from recbole_beta.errors import ConfigError, ConfigFileError, check, is_number
from recbole_beta.files import require_file


def check_config_file(file, loader):
    """Raise :class:`ConfigFileError` unless ``file`` is a readable YAML mapping (or empty)."""
    require_file(file, lambda why: ConfigFileError(f"config file {file}: {why}"),
                 not_file="not a file (give YAML files, separated by spaces)")
    try:
        with open(file, encoding="utf-8") as f:
            content = yaml.load(f.read(), Loader=loader)
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"config file {file}: not UTF-8 text (byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise ConfigFileError(f"config file {file}{where}: not valid YAML: {problem}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigFileError(f"config file {file}: holds a {type(content).__name__}, not a mapping of config keys "
                              "to values (key: value lines)")


#: keys for which an empty value means something: gpu_id '' is the CPU (Ray gives it so to a task without GPUs)
_EMPTY_ALLOWED = ("gpu_id",)


def check_no_empty_values(given):
    """A key given with nothing after ``=`` (``--epochs=``) is refused, not passed on as an empty string."""
    for key, value in given.items():
        if key in _EMPTY_ALLOWED:
            continue
        # exactly empty: a tab or a space is a value (field_separator: "\t")
        check(key, value, value != "", "a value is missing: write --key=value (or key: value in a config file)")


def key_rules(model=None):
    """The rules of properties/checks.yaml for a run of ``model`` (a name): every run's, then the model's own
    (a key means what its model reads: ItemKNN's k is not ADMMSLIM's)."""
    table = value_checks()
    return {**table["every model"], **(table["models"].get(model) or {})}


def check_values(values, model=None):
    """The one check of each config value on its own: every key of ``values`` (a mapping: a config's, or a
    few keys) that properties/checks.yaml names for ``model`` (a name) against its rule; raises ConfigError,
    one line naming the key and what it accepts. Keys absent from ``values`` are not asked for. The plugin's
    Config runs it as it is built, so the run script, a sweep spec's check and a search's fixed settings,
    which all build one, refuse the same values with the same line."""
    for key, rule in key_rules(model).items():
        if key not in values or (values[key] is None and rule.get("unset")):
            continue
        across = _ACROSS_KEYS.get(rule["type"])
        if across is not None:
            across(key, values[key], values)
        elif not _fits_shape(rule, values[key]):
            raise ConfigError(key, values[key], "must be " + _describe(rule, values[key]))
        elif _fits_shape({"type": "int", "min": 1}, values.get(rule.get("divides"))):
            other = rule["divides"]
            check(key, values[key], values[other] % values[key] == 0,
                  f"must divide {other}={values[other]}: {rule['why']}")


def _fits_shape(rule, value):
    shape = rule.get("shape")
    if shape in ("list", "one or list") and isinstance(value, list):  # RecBole's models and topk take no tuple
        return len(value) > 0 and all(_fits(rule, item) for item in value)
    return shape != "list" and _fits(rule, value)


def _fits(rule, value):
    kind = rule["type"]
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "path":
        return isinstance(value, (str, os.PathLike))
    if kind == "str":
        return isinstance(value, str) and ("choices" not in rule or _same(rule, value) in _choices(rule))
    if not is_number(value) or (kind == "int" and not isinstance(value, int)) or not math.isfinite(value):
        return False
    bounds = (("min", operator.ge), ("above", operator.gt), ("max", operator.le), ("below", operator.lt))
    return (all(rule.get(name) is None or holds(value, rule[name]) for name, holds in bounds)
            and (not rule.get("even") or value % 2 == 0))


def _same(rule, text):
    return text.lower() if rule.get("nocase") else text


def _choices(rule):
    return [_same(rule, str(choice)) for choice in rule["choices"]]


def _describe(rule, value):
    """What ``rule`` accepts, as the ``must be ...`` of its message (``value``: what was given, for a hint)."""
    if "what" in rule:
        return rule["what"]
    one = {"bool": "True or False", "dict": "a mapping", "path": "a folder path", "str": "text"}.get(rule["type"])
    if rule["type"] == "str" and "choices" in rule:
        close = difflib.get_close_matches(_same(rule, str(value)), _choices(rule), n=1)
        original = dict(zip(_choices(rule), rule["choices"]))
        one = f"one of {', '.join(map(str, rule['choices']))}" + (
            f" (did you mean {original[close[0]]!r}?)" if close else "")
    elif one is None:  # int or number, as errors.check_number words them
        noun = "integer" if rule["type"] == "int" else "number"
        article = "an even" if rule.get("even") else "an" if noun == "integer" else "a"
        if isinstance(value, float) and not math.isfinite(value):
            article = "a finite"
        signs = (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<"))
        bounds = [f"{sign} {rule[name]}" for name, sign in signs if rule.get(name) is not None]
        one = " ".join([article, noun, " and ".join(bounds)]).strip()
    shape = rule.get("shape")
    if shape == "list":
        return f"a non-empty list, each {one}"
    return f"{one} or a non-empty list of them" if shape == "one or list" else one


def metric_results(names, topk):
    """The names of the results a run computes with the metrics ``names`` (a name or a list: the config's
    ``metrics``) and ``topk`` (an int or a list), lower-case as RecBole reports them: ``ndcg@10`` for each k
    of a metric of the top k items, ``auc`` for one of all scores (RecBole's metrics say which by what they
    need)."""
    names = [names] if isinstance(names, str) else list(names or [])
    ks = [topk] if isinstance(topk, int) else list(topk or [])
    results = []
    metrics.register_metrics()
    for name in (n.lower() for n in names):
        needs = register.metric_information.get(name, ())
        per_k = "rec.topk" in needs or "rec.items" in needs
        results.extend([f"{name}@{k}" for k in ks] if per_k else [name])
    return results


def _check_metrics(key, value, values):
    """``metrics``: names RecBole knows (the plugin's registered), not ranking and value metrics mixed (RecBole
    computes one kind), and no value metric under full ranking (it needs labeled pairs)."""
    names = [value] if isinstance(value, str) else value
    check(key, value, isinstance(names, list) and len(names) > 0 and all(isinstance(n, str) for n in names),
          "must be a metric name or a non-empty list of them, e.g. [Recall, NDCG]")
    metrics.register_metrics()
    known = register.metrics_dict
    for name in names:
        if name.lower() not in known:
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f" (did you mean {known[close[0]].__name__!r}?)" if close else ""
            raise ConfigError(key, value, f"{name!r} is not a metric RecBole knows{hint}; it knows "
                                          f"{', '.join(sorted(cls.__name__ for cls in known.values()))}")
    scored = [n for n in names if register.metric_types[n.lower()] == EvaluatorType.VALUE]
    ranked = [n for n in names if n not in scored]
    check(key, value, not (scored and ranked), f"ranking metrics ({', '.join(ranked)}) and value metrics "
                                              f"({', '.join(scored)}) cannot be mixed")
    eval_args = values.get("eval_args")
    mode = eval_args.get("mode", "full") if isinstance(eval_args, dict) else None
    full = mode == "full" or (isinstance(mode, dict) and "full" in mode.values())
    check(key, value, not (scored and full), f"{', '.join(scored)} score{'s' if len(scored) == 1 else ''} predicted "
          "values, and eval_args.mode is full ranking: use ranking metrics (Recall, NDCG, ...)")


def _check_valid_metric(key, value, values):
    """``valid_metric``: one of the results the run computes (checked after ``metrics`` and ``topk``); RecBole
    looks it up only once the first epoch has trained."""
    if "metrics" not in values or "topk" not in values:
        return
    computed = metric_results(values["metrics"], values["topk"])
    check(key, value, isinstance(value, str) and value.lower() in computed,
          f"must be one of the metrics the run computes (metrics x topk): {', '.join(computed)}")


#: the rule types of properties/checks.yaml that are checked against other keys
_ACROSS_KEYS = {"metrics": _check_metrics, "valid_metric": _check_valid_metric}
