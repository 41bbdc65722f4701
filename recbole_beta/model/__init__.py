"""The plugin's models: Mult-VAE with pluggable beta strategies, found by looking in this package.

Adding a named model is one module here (a ``BetaMultVAE`` subclass that sets ``strategy``, as
``cyclical_beta_multvae.py`` does) and its ``properties/model/<Model>.yaml``: every module of the package
is imported below and each ``BetaMultVAE`` subclass it defines is a model, so there is no list to edit.
"""

import importlib
import inspect
import pkgutil

from recbole_beta.model.annealed_beta_multvae import AnnealedBetaMultVAE
from recbole_beta.model.beta_multvae import ACTIVATIONS, BetaMultVAE
from recbole_beta.model.constant_beta_multvae import ConstantBetaMultVAE
from recbole_beta.model.controlled_beta_multvae import ControlledBetaMultVAE
from recbole_beta.model.cyclical_beta_multvae import CyclicalBetaMultVAE
from recbole_beta.model.nceplrec import NCEPLRec
from recbole_beta.model.pop import Pop
from recbole_beta.model.scaled_beta_multvae import ScaledBetaMultVAE


def _find_models():
    """Model name -> class: BetaMultVAE and every subclass of it a module of this package defines."""
    found = {BetaMultVAE.__name__: BetaMultVAE}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BetaMultVAE) and cls.__module__ == module.__name__:
                found.setdefault(cls.__name__, cls)
    return found


#: model name -> class, for the model lookup
MODELS = _find_models()

#: RecBole's models with a defect fixed or a piece kept, found by the model lookup before RecBole's own
FIXED_RECBOLE_MODELS = {cls.__name__: cls for cls in (Pop, NCEPLRec)}

__all__ = [
    "ACTIVATIONS",
    "FIXED_RECBOLE_MODELS",
    "MODELS",
    "AnnealedBetaMultVAE",
    "BetaMultVAE",
    "ConstantBetaMultVAE",
    "ControlledBetaMultVAE",
    "CyclicalBetaMultVAE",
    "NCEPLRec",
    "Pop",
    "ScaledBetaMultVAE",
]
