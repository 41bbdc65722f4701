"""Composition of strategies: a per-user scale times a schedule over time."""

from recbole_beta.beta.base import BetaStrategy


class ProductBeta(BetaStrategy):
    """beta_u,t = product of its factors' betas, e.g. gamma * |x_u| * cyclical(t).

    Every factor steps together, and each sees the same batch KL.
    """

    def __init__(self, factors):
        super().__init__()
        self.factors = list(factors)
        self.per_user = any(f.per_user for f in self.factors)
        self.is_schedule = any(f.is_schedule for f in self.factors)
        self.needs_kl = any(f.needs_kl for f in self.factors)

    def step(self, kl=None):
        super().step()
        for factor in self.factors:
            factor.step(kl=kl)

    @property
    def beta(self):
        value = 1.0
        for factor in self.factors:
            value = value * factor.beta
        return value

    def weights(self, activity):
        value = 1.0
        for factor in self.factors:
            value = value * factor.weights(activity)
        return value

    def state_dict(self):
        return {"step_count": self.step_count, "factors": [f.state_dict() for f in self.factors]}

    def load_state_dict(self, state):
        if len(state["factors"]) != len(self.factors):
            raise KeyError(f"ProductBeta state has {len(state['factors'])} factors, expected {len(self.factors)}")
        self.step_count = state["step_count"]
        for factor, factor_state in zip(self.factors, state["factors"]):
            factor.load_state_dict(factor_state)

    def extra_repr(self):
        return " x ".join(repr(f) for f in self.factors)

    def __repr__(self):
        return self.extra_repr()
