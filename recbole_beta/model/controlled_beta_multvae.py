r"""
ControlledBetaMultVAE
################################################
Reference:
    Huajie Shao et al. "ControlVAE: Controllable Variational Autoencoder." in ICML 2020.

A PI controller moves beta so that the batch KL tracks kl_target.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class ControlledBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with beta from a non-linear PI controller on the KL.

    Keys: ``kl_target``, ``kp``, ``ki``, ``beta_min``, ``beta_max``.
    """

    strategy = "controlled"
