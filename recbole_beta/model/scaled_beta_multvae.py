r"""
ScaledBetaMultVAE
################################################
Reference:
    Ilya Shenbin et al. "RecVAE: a New Variational Autoencoder for Top-N Recommendations with Implicit Feedback."
    in WSDM 2020.

Per-user beta proportional to activity: users with few interactions weigh less on the latent space.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class ScaledBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with beta_u = gamma * |x_u| (keys ``gamma``, ``normalize_activity``)."""

    strategy = "scaled"
