r"""
AnnealedBetaMultVAE
################################################
Reference:
    Dawen Liang et al. "Variational Autoencoders for Collaborative Filtering." in WWW 2018.

Linear KL annealing to a cap, as in RecBole's MultiVAE: with the same keys it reproduces it.
"""

from recbole_beta.model.beta_multvae import BetaMultVAE


class AnnealedBetaMultVAE(BetaMultVAE):
    r"""Mult-VAE with beta_t = min(anneal_cap, t / total_anneal_steps), t the training step."""

    strategy = "annealed"
