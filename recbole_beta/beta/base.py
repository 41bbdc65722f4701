"""The beta-strategy interface, modelled on ``torch.optim.lr_scheduler``.

A strategy is a small stateful object that knows nothing of RecBole:

* ``step(kl=None)`` advances it by one training step (one batch). The model calls it once per
  training batch, *before* it weights that batch's KL, so during training ``step_count`` is the
  1-based index of the current batch (this is the order RecBole's MultiVAE uses for its anneal
  counter, which keeps the annealed strategy identical to it). ``kl`` is the batch-mean KL of that
  step, which feedback strategies read and the others ignore.
* ``beta`` is the current scalar value (for a per-user strategy: the value of a user of mean
  activity); ``weights(activity)`` is the beta of each user of the batch, either that scalar or a
  tensor shaped like ``activity`` (the users' training-interaction counts |x_u|).
* ``state_dict()`` / ``load_state_dict()`` carry only the mutable state (counters, controller
  memory), as plain Python numbers and lists, so a checkpoint loads with ``weights_only=True``
  and hyperparameters keep coming from the config.
"""

from dataclasses import dataclass

#: strategy name (as written in YAML) -> class
STRATEGIES = {}


def register_strategy(name):
    """Class decorator that makes a strategy available as ``beta_strategy: <name>``."""

    def decorator(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorator


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy may need to know about the run it serves.

    Attributes:
        total_steps: training steps (batches) the run will take: epochs x batches per epoch.
        mean_activity: mean |x_u| over the training users that have interactions.
    """

    total_steps: int = 1
    mean_activity: float = 1.0


class BetaStrategy:
    """Base class of all beta strategies."""

    name = None
    #: True if ``weights`` differs between users.
    per_user = False
    #: False for pure per-user scales, which carry no schedule over time.
    is_schedule = True
    #: True if ``step`` reads the batch KL (the model then computes it for every step).
    needs_kl = False
    #: names of the attributes that ``state_dict`` saves
    state_keys = ("step_count",)

    def __init__(self):
        self.step_count = 0

    @classmethod
    def from_config(cls, config, context):
        """Build the strategy from a config mapping, validating its keys (raises ConfigError)."""
        raise NotImplementedError

    def step(self, kl=None):
        """Advance by one training step; ``kl`` is that step's batch-mean KL."""
        self.step_count += 1

    @property
    def beta(self):
        """The current scalar beta."""
        return self.value_at(self.step_count)

    def value_at(self, step):
        """The scalar beta at a given step count, for schedules that depend on time alone."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form schedule")

    def weights(self, activity):
        """Per-user beta for a batch whose users have ``activity`` = |x_u| (a float tensor)."""
        return self.beta

    def state_dict(self):
        return {key: getattr(self, key) for key in self.state_keys}

    def load_state_dict(self, state):
        missing = set(self.state_keys) - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__} state lacks {sorted(missing)}")
        for key in self.state_keys:
            setattr(self, key, state[key])

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"
