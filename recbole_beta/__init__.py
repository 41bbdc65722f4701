"""recbole-beta: studying how the KL weight (beta) of Mult-VAE should be controlled, on RecBole 1.2.1."""

__version__ = "0.1.0"
