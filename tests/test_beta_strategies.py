"""Each strategy's value at chosen steps, worked out by hand; state round trips; composition."""

import math

import pytest
import torch

from conftest import run_python, source_copy
from recbole_beta.beta import (
    ConstantBeta,
    CyclicalBeta,
    LinearAnnealBeta,
    PIControlBeta,
    ProductBeta,
    StrategyContext,
    UserScaledBeta,
    build_strategy,
)


def run_steps(strategy, n, kl=None):
    values = []
    for _ in range(n):
        strategy.step(kl=kl)
        values.append(strategy.beta)
    return values


class TestConstant:
    def test_same_value_at_every_step(self):
        s = ConstantBeta(0.3)
        assert s.beta == 0.3
        assert run_steps(s, 5) == [0.3] * 5
        assert s.step_count == 5


class TestLinearAnneal:
    def test_rises_by_one_over_total_steps_then_caps(self):
        # RecBole's MultiVAE: the counter is incremented before use, so batch 1 has beta 1/T
        s = LinearAnnealBeta(anneal_cap=0.3, total_anneal_steps=10)
        assert s.beta == 0.0
        assert run_steps(s, 5) == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])

    def test_cap_exactly_reached(self):
        s = LinearAnnealBeta(anneal_cap=0.5, total_anneal_steps=4)
        assert run_steps(s, 3) == pytest.approx([0.25, 0.5, 0.5])

    def test_zero_steps_means_cap_from_the_start(self):
        s = LinearAnnealBeta(anneal_cap=0.2, total_anneal_steps=0)
        assert s.beta == 0.2
        assert run_steps(s, 2) == [0.2, 0.2]


class TestCyclical:
    def test_linear_two_cycles_half_ratio(self):
        # 8 steps, 2 cycles of 4; rise over the first half (2 steps) of each: 0, .5, hold 1, 1
        s = CyclicalBeta(beta_max=1.0, n_cycles=2, ratio=0.5, shape="linear", cycle_length=4)
        assert s.beta == 0.0
        assert run_steps(s, 8) == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0])

    def test_holds_beta_max_after_the_last_cycle(self):
        s = CyclicalBeta(beta_max=0.4, n_cycles=2, ratio=0.5, shape="linear", cycle_length=4)
        values = run_steps(s, 11)
        assert values[8:] == pytest.approx([0.4, 0.4, 0.4])

    def test_ratio_one_rises_over_the_whole_cycle(self):
        s = CyclicalBeta(beta_max=1.0, n_cycles=1, ratio=1.0, shape="linear", cycle_length=4)
        assert run_steps(s, 5) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])

    def test_cycle_boundary_restarts_at_zero(self):
        s = CyclicalBeta(beta_max=0.2, n_cycles=3, ratio=0.25, shape="linear", cycle_length=8)
        values = run_steps(s, 24)
        # rising phase lasts 0.25 * 8 = 2 steps: 0, 0.1, then hold 0.2
        assert values[:4] == pytest.approx([0.0, 0.1, 0.2, 0.2])
        assert values[7] == pytest.approx(0.2) and values[8] == 0.0 and values[16] == 0.0

    def test_cosine_and_sigmoid_shapes(self):
        # 1 cycle of 8 steps, ratio 1: f = 0, 1/8, ..., 7/8
        cos = CyclicalBeta(1.0, 1, 1.0, "cosine", 8)
        values = run_steps(cos, 8)
        assert values[0] == 0.0
        assert values[4] == pytest.approx(0.5)  # f = 1/2: (1 - cos(pi/2)) / 2
        assert values[2] == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
        sig = CyclicalBeta(1.0, 1, 1.0, "sigmoid", 8)
        values = run_steps(sig, 8)
        assert values[0] == pytest.approx(0.0, abs=1e-12)
        assert values[4] == pytest.approx(0.5)  # the logistic's midpoint
        lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
        assert values[2] == pytest.approx((1 / (1 + math.exp(3)) - lo) / (hi - lo))  # 12 * 1/4 - 6 = -3

    def test_cycle_length_from_the_run(self):
        # 10 epochs x 3 batches = 30 steps, 3 cycles -> 10 steps each
        s = build_strategy(
            {"beta_strategy": "cyclical", "n_cycles": 3, "ratio": 0.5, "beta_max": 1.0},
            StrategyContext(total_steps=30),
        )
        assert s.cycle_length == 10
        values = run_steps(s, 30)
        assert values[:6] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        assert values[10] == 0.0 and values[20] == 0.0


class TestUserScaled:
    def test_gamma_times_activity(self):
        s = UserScaledBeta(gamma=0.01, normalize_activity=False, mean_activity=20.0)
        w = s.weights(torch.tensor([0.0, 5.0, 100.0]))
        assert torch.allclose(w, torch.tensor([0.0, 0.05, 1.0]))
        assert s.beta == pytest.approx(0.2)  # the user of mean activity
        run_steps(s, 3)
        assert torch.allclose(s.weights(torch.tensor([5.0])), torch.tensor([0.05]))  # no time dependence

    def test_normalised_by_mean_activity(self):
        s = UserScaledBeta(gamma=0.2, normalize_activity=True, mean_activity=50.0)
        w = s.weights(torch.tensor([25.0, 50.0, 100.0]))
        assert torch.allclose(w, torch.tensor([0.1, 0.2, 0.4]))
        assert s.beta == pytest.approx(0.2)

    def test_activity_exponent_by_hand(self):
        activity = torch.tensor([4.0, 16.0, 64.0])
        flat = UserScaledBeta(gamma=0.1, normalize_activity=False, mean_activity=16.0, activity_exponent=0.5)
        assert torch.allclose(flat.weights(activity), torch.tensor([0.2, 0.4, 0.8]))  # 0.1 * sqrt(|x_u|)
        assert flat.beta == pytest.approx(0.4)
        steep = UserScaledBeta(gamma=0.2, normalize_activity=True, mean_activity=16.0, activity_exponent=2.0)
        assert torch.allclose(steep.weights(activity), torch.tensor([0.2 / 16, 0.2, 0.2 * 16]))  # 0.2 (x / 16)^2
        assert steep.beta == pytest.approx(0.2)  # the user of mean activity, whatever alpha

    @pytest.mark.parametrize("normalize", [False, True])
    def test_exponent_one_is_the_proportional_strategy_bit_for_bit(self, normalize):
        activity = torch.rand(1000) * 300
        s = UserScaledBeta(gamma=0.0137, normalize_activity=normalize, mean_activity=53.7, activity_exponent=1.0)
        scale = 0.0137 / 53.7 if normalize else 0.0137  # the strategy before activity_exponent existed
        assert torch.equal(s.weights(activity), scale * activity)
        assert build_strategy({"beta_strategy": "scaled", "gamma": 0.0137, "normalize_activity": normalize},
                              StrategyContext(mean_activity=53.7)).activity_exponent == 1.0  # the default

    def test_exponent_zero_is_a_constant_gamma(self):
        s = UserScaledBeta(gamma=0.3, normalize_activity=True, mean_activity=20.0, activity_exponent=0.0)
        assert torch.equal(s.weights(torch.tensor([0.0, 1.0, 20.0, 500.0])), torch.full((4,), 0.3))


class TestPIControl:
    def test_kl_above_target_raises_beta(self):
        s = PIControlBeta(kl_target=10.0, kp=0.01, ki=0.001, beta_min=0.0, beta_max=1.0)
        s.step(kl=12.0)  # e = -2: P = 0.01 / (1 + e^-2), I = 0.002
        p = 0.01 / (1 + math.exp(-2))
        assert s.integral == pytest.approx(0.002)
        assert s.beta == pytest.approx(p + 0.002)
        s.step(kl=12.0)  # the integral keeps growing while KL stays above target
        assert s.beta == pytest.approx(p + 0.004)

    def test_kl_below_target_lowers_beta_to_the_bound(self):
        s = PIControlBeta(kl_target=10.0, kp=0.01, ki=0.001, beta_min=0.05, beta_max=1.0)
        s.step(kl=13.0)  # e = -3: P = 0.01/(1+e^-3), I = 0.003
        high = s.beta
        assert high == pytest.approx(0.01 / (1 + math.exp(-3)) + 0.003 + 0.05)
        s.step(kl=9.0)  # e = 1: P = 0.01/(1+e), I = 0.003 - 0.001 = 0.002
        assert s.beta == pytest.approx(0.01 / (1 + math.e) + 0.002 + 0.05)
        assert s.beta < high
        s.step(kl=5.0)  # e = 5: I would be -0.003, below -P: clamped to -P, so beta = beta_min
        assert s.integral == pytest.approx(-0.01 / (1 + math.exp(5)))
        assert s.beta == pytest.approx(0.05)
        for _ in range(100):
            s.step(kl=0.0)
        assert s.beta == pytest.approx(0.05)

    def test_anti_windup_clamps_the_integral_at_saturation(self):
        s = PIControlBeta(kl_target=1.0, kp=0.0, ki=0.1, beta_min=0.0, beta_max=0.25)
        run_steps(s, 2, kl=2.0)  # e = -1: I = 0.1, 0.2
        assert s.integral == pytest.approx(0.2) and s.beta == pytest.approx(0.2)
        run_steps(s, 5, kl=2.0)  # I would reach 0.7; clamped at beta_max - beta_min - P = 0.25
        assert s.integral == pytest.approx(0.25) and s.beta == pytest.approx(0.25)
        s.step(kl=0.0)  # e = +1: leaves the bound at once (no wound-up integral to unwind)
        assert s.integral == pytest.approx(0.15) and s.beta == pytest.approx(0.15)

    def test_needs_the_kl(self):
        with pytest.raises(ValueError, match="kl"):
            PIControlBeta(1.0, 0.01, 0.001, 0.0, 1.0).step()

    def test_large_errors_do_not_overflow(self):
        s = PIControlBeta(kl_target=1e6, kp=0.5, ki=0.0, beta_min=0.0, beta_max=1.0)
        s.step(kl=0.0)
        assert s.beta == pytest.approx(0.0, abs=1e-12)
        s.step(kl=1e9)
        assert s.beta == pytest.approx(0.5)


class TestProduct:
    def test_scaled_times_cyclical(self):
        scale = UserScaledBeta(gamma=0.1, normalize_activity=False, mean_activity=4.0)
        cyc = CyclicalBeta(beta_max=1.0, n_cycles=1, ratio=1.0, shape="linear", cycle_length=4)
        p = ProductBeta([scale, cyc])
        assert p.per_user and p.is_schedule and not p.needs_kl
        p.step()
        p.step()  # cyclical at step 2: 0.25
        w = p.weights(torch.tensor([2.0, 8.0]))
        assert torch.allclose(w, torch.tensor([0.1 * 2 * 0.25, 0.1 * 8 * 0.25]))
        assert p.beta == pytest.approx(0.1 * 4 * 0.25)

    def test_from_yaml_list(self):
        s = build_strategy(
            {"beta_strategy": ["scaled", "controlled"], "gamma": 0.01, "kl_target": 5.0},
            StrategyContext(total_steps=10, mean_activity=3.0),
        )
        assert isinstance(s, ProductBeta) and s.needs_kl
        s.step(kl=7.0)
        assert s.factors[1].step_count == 1

    def test_two_schedules_rejected(self):
        from recbole_beta.errors import ConfigError

        with pytest.raises(ConfigError, match="at most one schedule"):
            build_strategy({"beta_strategy": ["annealed", "cyclical"]})


class TestState:
    @pytest.mark.parametrize(
        "config",
        [
            {"beta_strategy": "annealed", "total_anneal_steps": 7},
            {"beta_strategy": "cyclical", "n_cycles": 2},
            {"beta_strategy": "controlled", "kl_target": 3.0, "ki": 0.01},
            {"beta_strategy": ["scaled", "cyclical"], "n_cycles": 3},
        ],
    )
    def test_resumed_strategy_follows_the_same_trajectory(self, config):
        ctx = StrategyContext(total_steps=20, mean_activity=5.0)
        kls = [float(k % 7) for k in range(20)]
        whole = build_strategy(config, ctx)
        expected = [(whole.step(kl=k), whole.beta)[1] for k in kls]

        first = build_strategy(config, ctx)
        for k in kls[:8]:
            first.step(kl=k)
        state = first.state_dict()
        torch.save(state, "state.pt")
        second = build_strategy(config, ctx)
        second.load_state_dict(torch.load("state.pt", weights_only=True))
        rest = [(second.step(kl=k), second.beta)[1] for k in kls[8:]]
        assert rest == pytest.approx(expected[8:])

    def test_state_is_mutable_state_only(self):
        s = PIControlBeta(1.0, 0.1, 0.1, 0.0, 1.0)
        assert set(s.state_dict()) == {"step_count", "integral", "current_beta"}
        with pytest.raises(KeyError):
            s.load_state_dict({"step_count": 3})


STRATEGY_MODULE = '''"""A strategy added as one module: beta_t = beta / 2."""

from recbole_beta.beta.base import BetaStrategy, register_strategy
from recbole_beta.errors import check_number


@register_strategy("halved_probe")
class HalvedBeta(BetaStrategy):
    def __init__(self, beta):
        super().__init__()
        self.value = beta / 2

    @classmethod
    def from_config(cls, config, context):
        return cls(check_number("beta", config["beta"], minimum=0))

    def value_at(self, step):
        return self.value
'''

PROBE = '''
import sys
import recbole_beta
assert recbole_beta.__file__.startswith(sys.argv[1]), recbole_beta.__file__  # the copy, not the checkout
from recbole_beta.beta import STRATEGIES, build_strategy
from recbole_beta.quick_start import run_recbole_beta
assert "halved_probe" in STRATEGIES
strategy = build_strategy({"beta_strategy": "halved_probe", "beta": 0.3})
strategy.step()
assert strategy.beta == 0.15, strategy.beta
result = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={"beta_strategy": ["halved_probe", "scaled"],
                          "beta": 0.3, "epochs": 1, "state": "ERROR", "show_progress": False,
                          "results_dir": None, "checkpoint_dir": "saved"})
print("ok", result["history"][0]["beta"])
'''


@pytest.mark.slow
def test_a_strategy_is_one_module_and_no_list_to_edit(tmp_path):
    """A module dropped into recbole_beta/beta/ is a strategy the config, a product and a model take,
    with nothing else edited (before, the package imported its modules by name). Dropped into a copy of the
    package under tmp_path, first on the probe's path: the checkout is never written."""
    root = source_copy(tmp_path / "src")
    (root / "recbole_beta" / "beta" / "probe_strategy.py").write_text(STRATEGY_MODULE)
    done = run_python(PROBE, cwd=tmp_path, path_first=[root], args=[str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("ok ")
