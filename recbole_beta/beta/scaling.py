"""Per-user beta: scaling the KL weight by each user's activity."""

from recbole_beta.beta.base import BetaStrategy, register_strategy
from recbole_beta.errors import check, check_number


@register_strategy("scaled")
class UserScaledBeta(BetaStrategy):
    """beta_u = gamma * |x_u|^alpha, |x_u| the number of items user u interacted with in training.

    With ``normalize_activity`` the count is divided by its mean over training users,
    beta_u = gamma * (|x_u| / mean|x|)^alpha, so gamma is the beta of an average user on any
    dataset. ``activity_exponent`` (alpha) says how strongly beta follows activity: 1 (the default)
    is proportional, 0 a constant gamma, between 0 and 1 a smaller spread between light and heavy
    users, above 1 a larger one. The same idea weights RecVAE's KL term (Shenbin et al., WSDM 2020).
    Constant over time: combine it with a schedule (``beta_strategy: [scaled, annealed]``) to anneal it.
    """

    per_user = True
    is_schedule = False

    def __init__(self, gamma, normalize_activity, mean_activity, activity_exponent=1.0):
        super().__init__()
        self.gamma = gamma
        self.normalize_activity = normalize_activity
        self.mean_activity = mean_activity
        self.activity_exponent = activity_exponent
        self.scale = gamma / mean_activity if normalize_activity else gamma

    @classmethod
    def from_config(cls, config, context):
        gamma = check_number("gamma", config["gamma"], minimum=0)
        normalize = config["normalize_activity"]
        check("normalize_activity", normalize, isinstance(normalize, bool), "must be True or False")
        alpha = check_number("activity_exponent", config["activity_exponent"], minimum=0)
        return cls(gamma, normalize, context.mean_activity, alpha)

    @property
    def beta(self):
        # a user of mean activity
        return self.weights(self.mean_activity)

    def weights(self, activity):
        if self.activity_exponent == 1:  # the proportional strategy, to the last bit
            return self.scale * activity
        if self.normalize_activity:
            return self.gamma * (activity / self.mean_activity) ** self.activity_exponent
        return self.gamma * activity ** self.activity_exponent

    def extra_repr(self):
        return (f"gamma={self.gamma}, normalize_activity={self.normalize_activity}, "
                f"activity_exponent={self.activity_exponent}")
