"""Beta schedules over training time: constant, linear annealing, cyclical annealing."""

import math

from recbole_beta.beta.base import BetaStrategy, register_strategy
from recbole_beta.errors import check, check_number


@register_strategy("constant")
class ConstantBeta(BetaStrategy):
    """beta_t = beta, at every step."""

    def __init__(self, beta):
        super().__init__()
        self.value = beta

    @classmethod
    def from_config(cls, config, context):
        return cls(check_number("beta", config["beta"], minimum=0))

    def value_at(self, step):
        return self.value

    def extra_repr(self):
        return f"beta={self.value}"


@register_strategy("annealed")
class LinearAnnealBeta(BetaStrategy):
    """beta_t = min(anneal_cap, t / total_anneal_steps); anneal_cap when total_anneal_steps = 0.

    The Mult-VAE heuristic (Liang et al., WWW 2018) as RecBole's MultiVAE computes it, t counting
    training batches from 1.
    """

    def __init__(self, anneal_cap, total_anneal_steps):
        super().__init__()
        self.anneal_cap = anneal_cap
        self.total_anneal_steps = total_anneal_steps

    @classmethod
    def from_config(cls, config, context):
        cap = check_number("anneal_cap", config["anneal_cap"], minimum=0)
        steps = check_number("total_anneal_steps", config["total_anneal_steps"], minimum=0, integer=True)
        return cls(cap, steps)

    def value_at(self, step):
        if self.total_anneal_steps > 0:
            return min(self.anneal_cap, 1.0 * step / self.total_anneal_steps)
        return self.anneal_cap

    def extra_repr(self):
        return f"anneal_cap={self.anneal_cap}, total_anneal_steps={self.total_anneal_steps}"


def _sigmoid_ramp(f):
    # logistic over [-6, 6] (Fu et al.'s sigmoid schedule), rescaled to run exactly from 0 to 1
    lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
    return (1 / (1 + math.exp(-(12 * f - 6))) - lo) / (hi - lo)


#: ramp shape name -> f(fraction of the rising phase in [0, 1]) in [0, 1]
RAMPS = {
    "linear": lambda f: f,
    "cosine": lambda f: 0.5 * (1 - math.cos(math.pi * f)),
    "sigmoid": _sigmoid_ramp,
}


@register_strategy("cyclical")
class CyclicalBeta(BetaStrategy):
    """Cyclical annealing (Fu et al., NAACL 2019).

    Training is cut into ``n_cycles`` cycles of ``cycle_length`` steps (by default the run's total
    steps / n_cycles). Within a cycle, at position tau = ((t - 1) mod cycle_length) / cycle_length,
    beta rises over the first ``ratio`` of the cycle and then holds:
    beta_t = beta_max * ramp(min(1, tau / ratio)). Past the last cycle beta stays at beta_max, and
    before the first step it is 0.
    """

    def __init__(self, beta_max, n_cycles, ratio, shape, cycle_length):
        super().__init__()
        self.beta_max = beta_max
        self.n_cycles = n_cycles
        self.ratio = ratio
        self.shape = shape
        self.cycle_length = cycle_length

    @classmethod
    def from_config(cls, config, context):
        beta_max = check_number("beta_max", config["beta_max"], minimum=0)
        n_cycles = check_number("n_cycles", config["n_cycles"], minimum=1, integer=True)
        ratio = check_number("ratio", config["ratio"], minimum=0, min_open=True, maximum=1)
        shape = config["cycle_shape"]
        check("cycle_shape", shape, shape in RAMPS, f"must be one of {sorted(RAMPS)}")
        length = check_number("cycle_length", config["cycle_length"], minimum=0, integer=True)
        if length == 0:
            length = context.total_steps / n_cycles
        return cls(beta_max, n_cycles, ratio, shape, length)

    def value_at(self, step):
        if step <= 0:
            return 0.0
        k = step - 1
        if k >= self.n_cycles * self.cycle_length:
            return self.beta_max
        tau = (k % self.cycle_length) / self.cycle_length
        return self.beta_max * RAMPS[self.shape](min(1.0, tau / self.ratio))

    def extra_repr(self):
        return (
            f"beta_max={self.beta_max}, n_cycles={self.n_cycles}, ratio={self.ratio}, "
            f"shape={self.shape!r}, cycle_length={self.cycle_length}"
        )
