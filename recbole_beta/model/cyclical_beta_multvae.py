r"""
CyclicalBetaMultVAE
################################################
Reference:
    Hao Fu et al. "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL Vanishing." in NAACL 2019.

beta rises from 0 to beta_max over the first part of each of n_cycles cycles, then holds.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class CyclicalBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with cyclical annealing of beta.

    Keys: ``beta_max``, ``n_cycles``, ``ratio``, ``cycle_shape``, ``cycle_length``.
    """

    strategy = "cyclical"
