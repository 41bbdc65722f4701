"""The plugin's models: Mult-VAE with pluggable beta strategies."""

from recbole_beta.model.annealed_beta_multvae import AnnealedBetaMultVAE
from recbole_beta.model.beta_multvae import ACTIVATIONS, BetaMultVAE
from recbole_beta.model.constant_beta_multvae import ConstantBetaMultVAE
from recbole_beta.model.controlled_beta_multvae import ControlledBetaMultVAE
from recbole_beta.model.cyclical_beta_multvae import CyclicalBetaMultVAE
from recbole_beta.model.pop import Pop
from recbole_beta.model.scaled_beta_multvae import ScaledBetaMultVAE

#: model name -> class, for the model lookup
MODELS = {
    cls.__name__: cls
    for cls in (
        BetaMultVAE,
        AnnealedBetaMultVAE,
        ConstantBetaMultVAE,
        CyclicalBetaMultVAE,
        ScaledBetaMultVAE,
        ControlledBetaMultVAE,
    )
}

#: RecBole's models with a defect fixed, found by the model lookup before RecBole's own
FIXED_RECBOLE_MODELS = {cls.__name__: cls for cls in (Pop,)}

__all__ = ["ACTIVATIONS", "FIXED_RECBOLE_MODELS", "MODELS", *MODELS, *FIXED_RECBOLE_MODELS]
