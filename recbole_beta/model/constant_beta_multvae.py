r"""
ConstantBetaMultVAE
################################################
Reference:
    Dawen Liang et al. "Variational Autoencoders for Collaborative Filtering." in WWW 2018.

A fixed KL weight: beta = 1 is the plain VAE, beta = 0 a denoising autoencoder with a Gaussian bottleneck.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class ConstantBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with a constant beta (key ``beta``)."""

    strategy = "constant"
