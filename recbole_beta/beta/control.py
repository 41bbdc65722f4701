"""Feedback-controlled beta: a PI controller that holds the KL at a target (ControlVAE)."""

import math

from recbole_beta.beta.base import BetaStrategy, register_strategy
from recbole_beta.errors import check, check_number


@register_strategy("controlled")
class PIControlBeta(BetaStrategy):
    """Non-linear PI control of beta (Shao et al., "ControlVAE", ICML 2020, Algorithm 1).

    At each step, with e = kl_target - KL_t (the batch-mean KL):
        P = kp / (1 + exp(e))            large when KL is above target, near 0 below it
        I <- I - ki * e                  grows while KL stays above target
        beta_t = clip(P + I + beta_min, beta_min, beta_max)
    Anti-windup: I is clamped so that P + I stays within [0, beta_max - beta_min]. The integral
    never stores more than the bounds let through, so beta leaves a bound as soon as the error
    changes sign. Before the first step beta = beta_min. Config keys: ``kl_target``, ``kp``, ``ki``,
    ``beta_min`` and ``controller_beta_max`` (the ``beta_max`` above).
    """

    state_keys = ("step_count", "integral", "current_beta")
    needs_kl = True

    def __init__(self, kl_target, kp, ki, beta_min, beta_max):
        super().__init__()
        self.kl_target = kl_target
        self.kp = kp
        self.ki = ki
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.integral = 0.0
        self.current_beta = beta_min

    @classmethod
    def from_config(cls, config, context):
        kl_target = check_number("kl_target", config["kl_target"], minimum=0)
        kp = check_number("kp", config["kp"], minimum=0)
        ki = check_number("ki", config["ki"], minimum=0)
        beta_min = check_number("beta_min", config["beta_min"], minimum=0)
        # a key of its own: beta_max is the cyclical peak, whose default (0.2) is no bound for a controller
        beta_max = check_number("controller_beta_max", config["controller_beta_max"], minimum=0)
        check("controller_beta_max", beta_max, beta_max >= beta_min, f"must be >= beta_min ({beta_min})")
        return cls(kl_target, kp, ki, beta_min, beta_max)

    def step(self, kl=None):
        if kl is None:
            raise ValueError("the controlled beta strategy needs the batch KL: call step(kl=...)")
        super().step()
        error = self.kl_target - float(kl)
        # kp / (1 + exp(e)) written with tanh, which cannot overflow for large |e|
        proportional = self.kp * 0.5 * (1.0 - math.tanh(error / 2.0))
        integral = self.integral - self.ki * error
        self.integral = min(self.beta_max - self.beta_min - proportional, max(-proportional, integral))
        # P + I now lies in [0, beta_max - beta_min]; the clip only guards against rounding
        self.current_beta = min(self.beta_max, max(self.beta_min, proportional + self.integral + self.beta_min))

    @property
    def beta(self):
        return self.current_beta

    def extra_repr(self):
        return (
            f"kl_target={self.kl_target}, kp={self.kp}, ki={self.ki}, "
            f"beta_min={self.beta_min}, beta_max={self.beta_max}"
        )
