"""Defaults, read from the plugin's ``properties/``: the one place they live.

``overall.yaml`` holds the defaults of every run, ``model/<Model>.yaml`` those of each model, and
``checks.yaml`` what each key accepts (beside the defaults, not among them: RecBole's keys keep their
defaults in RecBole). A model takes the YAML of each of the plugin's classes it derives from too, base
first: the named Mult-VAEs (``ControlledBetaMultVAE``, ...) take every key and default from
``BetaMultVAE.yaml`` and their own file sets only their ``beta_strategy``. Code reads these values and
validates them; it does not repeat them. Plain YAML and nothing of RecBole, so the config, the
strategies and a sweep spec's plain dicts read the same defaults.
"""

import re
from functools import cache
from pathlib import Path

import yaml


def properties_dir():
    """The plugin's ``properties/``: inside the package once installed, beside it in a clone."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "properties", here.parent / "properties"):
        if (candidate / "overall.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"recbole-beta's properties/ not found beside {here}; reinstall the package")


class _Loader(yaml.SafeLoader):
    """YAML as RecBole's Config reads it: ``1e-4`` is a float, not a string."""


# the resolver of recbole/config/configurator.py's _build_yaml_loader
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@cache
def _read(path):
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader) or {}


def value_checks():
    """``properties/checks.yaml``: what each config key accepts, ``{"every model": {key: rule},
    "models": {model: {key: rule}}}`` (the rules are described at the top of the file)."""
    return _read(properties_dir() / "checks.yaml")


def model_files(model_class, name=None):
    """The plugin's property files of a model, lowest priority first: ``model/<Class>.yaml`` of each
    class of the plugin in the model's MRO, base first, then ``model/<name>.yaml`` (``name``: the
    model's name, the class's by default). Files that do not exist are left out."""
    folder = properties_dir() / "model"
    names = [cls.__name__ for cls in reversed(model_class.__mro__) if cls.__module__.startswith("recbole_beta.")]
    names.append(name or model_class.__name__)
    return [folder / f"{n}.yaml" for n in dict.fromkeys(names) if (folder / f"{n}.yaml").is_file()]


def model_properties(name):
    """The keys and defaults of ``properties/model/<name>.yaml`` alone, as a new dict."""
    file = properties_dir() / "model" / f"{name}.yaml"
    return dict(_read(file)) if file.is_file() else {}


def model_defaults(model_class):
    """Every default the plugin's model property files give ``model_class`` (see :func:`model_files`),
    as a new dict; ``overall.yaml``'s are not among them."""
    merged = {}
    for file in model_files(model_class):
        merged.update(_read(file))
    return merged


class WithDefaults:
    """A read-only view of a config over defaults: ``view[key]`` is the config's value, or the
    default where the config lacks the key or holds None (RecBole's Config reads an unset key as
    None). A key in neither is the config's own answer: None from RecBole's Config, KeyError from a dict."""

    def __init__(self, config, defaults):
        self.config, self.defaults = config, defaults

    def __contains__(self, key):
        return key in self.config or key in self.defaults

    def __getitem__(self, key):
        if key in self.config and self.config[key] is not None:
            return self.config[key]
        if key in self.defaults:
            return self.defaults[key]
        return self.config[key]

    def get(self, key, default=None):
        return self[key] if key in self else default
