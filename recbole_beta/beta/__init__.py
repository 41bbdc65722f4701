"""Beta strategies: what weight the KL term of a Mult-VAE gets, per step and per user.

``build_strategy(config, context)`` turns the ``beta_strategy`` key into a strategy:
a name from :data:`STRATEGIES` or a list of names, whose product is taken. A strategy's
``from_config`` reads its keys as they are; their defaults live in one file,
``properties/model/BetaMultVAE.yaml``, which ``build_strategy`` reads under any config.

Adding a strategy is one module in this package (a :class:`BetaStrategy` subclass under
``@register_strategy("name")``) and its keys in that YAML file: every module here is imported below,
so there is no list to edit.
"""

import importlib
import pkgutil

from recbole_beta.beta.base import STRATEGIES, BetaStrategy, StrategyContext, register_strategy
from recbole_beta.beta.compose import ProductBeta
from recbole_beta.beta.control import PIControlBeta
from recbole_beta.beta.scaling import UserScaledBeta
from recbole_beta.beta.schedules import RAMPS, ConstantBeta, CyclicalBeta, LinearAnnealBeta
from recbole_beta.defaults import WithDefaults, model_properties
from recbole_beta.errors import ConfigError

__all__ = [
    "STRATEGIES",
    "BetaStrategy",
    "StrategyContext",
    "register_strategy",
    "ConstantBeta",
    "LinearAnnealBeta",
    "CyclicalBeta",
    "UserScaledBeta",
    "PIControlBeta",
    "ProductBeta",
    "RAMPS",
    "build_strategy",
]

for _module in pkgutil.iter_modules(__path__):  # each registers its strategies as it is imported
    importlib.import_module(f"{__name__}.{_module.name}")

#: the model whose property file holds the default of every strategy key
DEFAULTS_FROM = "BetaMultVAE"


def _strategy_names(spec):
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(s, str) for s in spec):
        return list(spec)
    raise ConfigError("beta_strategy", spec, f"must be one of {sorted(STRATEGIES)} or a list of them")


def build_strategy(config, context=StrategyContext()):
    """Build the strategy that ``config['beta_strategy']`` names, validating every key it reads.

    A list of names is their product; it may hold at most one schedule over time, since two
    schedules would read the same keys and fight over the same factor.

    A key ``config`` lacks, or holds as None (RecBole's Config reads an unset key so), takes its
    default from ``properties/model/BetaMultVAE.yaml``: a plain dict such as
    ``{"beta_strategy": "cyclical", "n_cycles": 2}`` builds what a run's config would.
    """
    config = WithDefaults(config, model_properties(DEFAULTS_FROM))
    spec = config["beta_strategy"]
    names = _strategy_names(spec)
    for name in names:
        if name not in STRATEGIES:
            raise ConfigError("beta_strategy", spec, f"{name!r} is unknown; choose from {sorted(STRATEGIES)}")
    factors = [STRATEGIES[name].from_config(config, context) for name in names]
    if len(factors) == 1:
        return factors[0]
    schedules = [f.name for f in factors if f.is_schedule]
    if len(schedules) > 1 or len(set(names)) != len(names):
        raise ConfigError(
            "beta_strategy", spec, "a product takes each strategy once and at most one schedule over time"
        )
    return ProductBeta(factors)
