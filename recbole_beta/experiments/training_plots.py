"""Figures of training: each strategy's beta over steps, each run's per-epoch curves.

Figures of training: beta against the training step for each strategy (simulated from the
strategies themselves), and each run's per-epoch curves (reconstruction, weighted KL, mean beta, valid
metric). Saving, colours and legends as in :mod:`recbole_beta.experiments.plots`.
"""

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from recbole_beta.beta import DEFAULTS_FROM, RAMPS, StrategyContext, build_strategy
from recbole_beta.defaults import model_properties
from recbole_beta.experiments.plots import _finite, _legend_on_top, _legend_outside, _no_data, _save, label_colors
from recbole_beta.runs.record import is_ok

__all__ = ["beta_schedule_series", "plot_beta_schedules", "plot_training_curves"]

#: what each panel of :func:`plot_beta_schedules` sets over the strategies' defaults
#: (``properties/model/BetaMultVAE.yaml``), before ``config`` overrides them
SCHEDULE_DEFAULTS = {
    "annealed": {"beta_strategy": "annealed"},  # total_anneal_steps: total_steps / 2
    "cyclical": {"beta_strategy": "cyclical"},
    # gamma 0.2 of an average user: the annealed cap
    "scaled": {"beta_strategy": "scaled", "gamma": 0.2, "normalize_activity": True},
    # the cyclical factor runs 0 -> 1 here, so the product peaks at each user's scaled beta
    "scaled_cyclical": {"beta_strategy": ["scaled", "cyclical"], "gamma": 0.2, "normalize_activity": True,
                        "beta_max": 1.0},
    # kp 0.01 (the default): on the synthetic KL below (slope about -80 at the target) a kp near 0.05 makes
    # a loop gain near 1, and beta rings from step to step instead of settling
    "controlled": {"beta_strategy": "controlled", "ki": 0.001, "controller_beta_max": 0.5},
}

#: the synthetic KL the controller is simulated against: KL_t = scale * exp(-decay * beta_{t-1}) + noise
SYNTHETIC_KL = {"scale": 25.0, "decay": 8.0, "noise_std": 1.0}


# ------------------------------------------------------------------------------------------ beta schedules


def _panel_config(panel, total_steps, config):
    """The strategies' defaults, the panel's, then the flat keys of ``config``, then ``config[panel]``
    if it is a dict."""
    merged = {**model_properties(DEFAULTS_FROM), **SCHEDULE_DEFAULTS[panel]}
    if panel == "annealed":
        merged["total_anneal_steps"] = max(1, total_steps // 2)
    config = dict(config or {})
    per_panel = {name: config.pop(name) for name in list(config)
                 if name in SCHEDULE_DEFAULTS and isinstance(config[name], dict)}
    # beta_strategy is fixed by the panel; flat keys are the settings of a run, as BetaMultVAE reads them
    config.pop("beta_strategy", None)
    # None is how RecBole's Config spells an unset key: it keeps the panel's default
    merged.update({key: value for key, value in config.items() if value is not None})
    merged.update({key: value for key, value in per_panel.get(panel, {}).items() if value is not None})
    merged["beta_strategy"] = SCHEDULE_DEFAULTS[panel]["beta_strategy"]
    return merged


def _run_schedule(strategy, total_steps, activity=None, kl=None):
    """beta after each of ``total_steps`` steps, stepping the strategy as the model does in training."""
    values = []
    for _ in range(total_steps):
        strategy.step(kl=kl)
        values.append(strategy.weights(activity) if activity is not None else strategy.beta)
    return np.asarray(values, dtype=float)


def beta_schedule_series(total_steps=400, activities=(5, 20, 80, 320), mean_activity=80.0, config=None, seed=0):
    """The series :func:`plot_beta_schedules` draws, by stepping the strategies of ``recbole_beta.beta``.

    Step t (1-based) holds the beta the model uses for training batch t: the strategy is stepped, then
    read, as during training. ``config`` is described in :func:`plot_beta_schedules`.

    Returns:
        dict of 1-D arrays of length ``total_steps``: ``step``; ``annealed``; ``cyclical/<shape>`` for
        each shape in :data:`~recbole_beta.beta.RAMPS`; ``scaled/<a>`` and ``scaled_cyclical/<a>`` for
        each activity ``a``; ``controlled/beta``, ``controlled/kl`` (the synthetic KL each step saw) and
        ``controlled/target``.
    """
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    context = StrategyContext(total_steps=total_steps, mean_activity=float(mean_activity))
    series = {"step": np.arange(1, total_steps + 1)}

    annealed = build_strategy(_panel_config("annealed", total_steps, config), context)
    series["annealed"] = _run_schedule(annealed, total_steps)

    cyclical = _panel_config("cyclical", total_steps, config)
    for shape in RAMPS:
        strategy = build_strategy({**cyclical, "cycle_shape": shape}, context)
        series[f"cyclical/{shape}"] = _run_schedule(strategy, total_steps)

    activity = np.asarray(activities, dtype=float)
    for panel in ("scaled", "scaled_cyclical"):
        strategy = build_strategy(_panel_config(panel, total_steps, config), context)
        per_user = np.atleast_2d(_run_schedule(strategy, total_steps, activity=activity).T)
        if per_user.shape[0] != len(activity):  # a strategy that gives one scalar for every user
            per_user = np.repeat(per_user.reshape(1, -1), len(activity), axis=0)
        for a, values in zip(activities, per_user):
            series[f"{panel}/{a:g}"] = values

    controlled = _panel_config("controlled", total_steps, config)
    strategy = build_strategy(controlled, context)
    rng = np.random.default_rng(seed)
    betas, kls = np.empty(total_steps), np.empty(total_steps)
    for t in range(total_steps):
        # the KL of a batch responds to the beta the previous batch was trained with
        kl = SYNTHETIC_KL["scale"] * math.exp(-SYNTHETIC_KL["decay"] * strategy.beta)
        kl = max(0.0, kl + SYNTHETIC_KL["noise_std"] * rng.standard_normal())
        strategy.step(kl=kl)
        betas[t], kls[t] = strategy.beta, kl
    series["controlled/beta"] = betas
    series["controlled/kl"] = kls
    series["controlled/target"] = np.full(total_steps, float(controlled["kl_target"]))
    return series


def plot_beta_schedules(out_dir, total_steps=400, n_batches_per_epoch=4, activities=(5, 20, 80, 320),
                        mean_activity=80.0, config=None, seed=0):
    """Beta against training step for each strategy (file stem ``beta_schedules``).

    Panels: annealed; cyclical with each ramp shape; scaled (per-user, constant over time) for users of
    the given ``activities``; scaled x cyclical for the same users; and the PI controller simulated
    against a synthetic KL that falls as beta rises (``KL_t = 25 exp(-8 beta_{t-1}) + N(0, 1)``, noise
    from ``numpy.random.default_rng(seed)``), with the KL on a second axis.

    Args:
        out_dir: folder to write into (created if missing).
        total_steps: training steps (batches) of the simulated run.
        n_batches_per_epoch: batches per epoch; only sets the epoch axis drawn along the top.
        activities: training-interaction counts |x_u| of the users drawn in the per-user panels.
        mean_activity: mean |x_u| over users; the scaled panels use ``normalize_activity``, so a user
            of this activity gets beta = gamma (0.2 by default).
        config: optional dict of strategy keys (as in ``properties/model/BetaMultVAE.yaml``) that
            override the panels' defaults, e.g. the settings of a report's runs. Flat keys apply to
            every panel that reads them (``beta_max`` tops both cyclical panels, as in BetaMultVAE);
            a dict under a panel name (``annealed``, ``cyclical``, ``scaled``,
            ``scaled_cyclical``, ``controlled``) overrides that panel only. The cyclical panel always
            draws every shape; ``cycle_shape`` sets the shape of the scaled x cyclical panel.
        seed: seed of the synthetic KL noise.

    Returns:
        the paths written: ``[png, svg]``.
    """
    series = beta_schedule_series(total_steps, activities, mean_activity, config, seed)
    n_batches = max(1, int(n_batches_per_epoch))

    fig = Figure(figsize=(11, 10.5), layout="constrained")
    grid = fig.add_gridspec(3, 2)
    ax_anneal, ax_cyc = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    ax_scaled, ax_prod = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    ax_ctrl = fig.add_subplot(grid[2, :])

    _draw_annealed(ax_anneal, series, _panel_config("annealed", total_steps, config))
    _draw_cyclical(ax_cyc, series, _panel_config("cyclical", total_steps, config))
    _draw_per_user(ax_scaled, ax_prod, series, activities, mean_activity,
                   _panel_config("scaled", total_steps, config), _panel_config("scaled_cyclical", total_steps, config))
    _draw_controlled(ax_ctrl, series, _panel_config("controlled", total_steps, config))
    for ax in (ax_anneal, ax_cyc, ax_scaled, ax_prod, ax_ctrl):
        _step_axes(ax, total_steps, n_batches, beta_label=ax is not ax_ctrl)
    fig.suptitle(f"Beta per strategy over {total_steps} steps ({n_batches} batches per epoch; top axis: epoch)")
    return _save(fig, out_dir, "beta_schedules")


def _draw_annealed(ax, series, annealed):
    """The annealed panel: beta = min(cap, t / total_anneal_steps) (``annealed``: the panel's settings)."""
    ax.plot(series["step"], series["annealed"], color="tab:blue")
    ax.set_title(f"annealed: min({annealed['anneal_cap']:g}, t / {annealed['total_anneal_steps']:g})", fontsize=10)


def _draw_cyclical(ax, series, cyc):
    """The cyclical panel: one line per ramp shape (``cyc``: the panel's settings)."""
    for shape, style in zip(RAMPS, ("-", "--", ":")):
        ax.plot(series["step"], series[f"cyclical/{shape}"], linestyle=style, label=shape)
    ax.set_title(f"cyclical: {cyc['n_cycles']} cycles, ratio {cyc['ratio']:g}, max {cyc['beta_max']:g}",
                 fontsize=10)
    _legend_on_top(ax, ncol=3, title="ramp")


def _draw_per_user(ax_scaled, ax_prod, series, activities, mean_activity, scaled, product):
    """The two per-user panels, one line per activity: scaled, and scaled x cyclical (``scaled`` and
    ``product``: their settings)."""
    steps = series["step"]
    activity_colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(1, len(activities))))
    for a, color in zip(activities, activity_colors):
        ax_scaled.plot(steps, series[f"scaled/{a:g}"], color=color, label=f"|x_u| = {a:g}")
        ax_prod.plot(steps, series[f"scaled_cyclical/{a:g}"], color=color, label=f"|x_u| = {a:g}")
    scale_text = (f"gamma {scaled['gamma']:g} x |x_u| / {mean_activity:g}" if scaled["normalize_activity"]
                  else f"gamma {scaled['gamma']:g} x |x_u|")
    ax_scaled.set_title(f"scaled (per user): {scale_text}", fontsize=10)
    _legend_on_top(ax_scaled, ncol=len(activities))
    ax_prod.set_title(f"scaled x cyclical ({product['cycle_shape']}, max {product['beta_max']:g})", fontsize=10)
    _legend_on_top(ax_prod, ncol=len(activities))


def _draw_controlled(ax_ctrl, series, ctrl):
    """The controller's panel: its beta, and on a second axis the synthetic KL it saw and the KL target
    (``ctrl``: the panel's settings)."""
    steps = series["step"]
    ax_kl = ax_ctrl.twinx()
    ax_kl.plot(steps, series["controlled/kl"], color="tab:orange", alpha=0.6, linewidth=0.9, label="KL (synthetic)")
    ax_kl.axhline(ctrl["kl_target"], color="tab:orange", linestyle="--", linewidth=1,
                  label=f"KL target {ctrl['kl_target']:g}")
    ax_kl.set_ylabel("KL", color="tab:orange")
    ax_kl.tick_params(axis="y", colors="tab:orange")
    ax_ctrl.plot(steps, series["controlled/beta"], color="tab:blue", linewidth=1.5, label="beta")
    ax_ctrl.set_zorder(ax_kl.get_zorder() + 1)  # beta drawn over the noisy KL
    ax_ctrl.patch.set_visible(False)
    ax_ctrl.set_title(
        f"controlled (PI): kp {ctrl['kp']:g}, ki {ctrl['ki']:g}, beta in [{ctrl['beta_min']:g}, "
        f"{ctrl['controller_beta_max']:g}]; "
        f"KL_t = {SYNTHETIC_KL['scale']:g} exp(-{SYNTHETIC_KL['decay']:g} beta_(t-1)) + noise",
        fontsize=10,
    )
    handles = ax_ctrl.get_legend_handles_labels()[0] + ax_kl.get_legend_handles_labels()[0]
    ax_ctrl.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper right", ncol=3)
    ax_ctrl.set_ylim(0, 1.3 * max(series["controlled/beta"].max(), 1e-3))
    ax_kl.set_ylim(0, 1.3 * max(series["controlled/kl"].max(), ctrl["kl_target"], 1e-3))
    ax_ctrl.set_ylabel("beta", color="tab:blue")
    ax_ctrl.tick_params(axis="y", colors="tab:blue")


def _step_axes(ax, total_steps, n_batches, beta_label=True):
    """A panel's axes: steps along the bottom, epochs along the top, beta from 0 (labelled if ``beta_label``)."""
    ax.set_xlim(0, total_steps)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training step (batch)")
    ax.grid(alpha=0.3)
    if beta_label:
        ax.set_ylabel("beta")
    top = ax.secondary_xaxis("top", functions=(lambda s: s / n_batches, lambda e: e * n_batches))
    top.tick_params(labelsize=7)


# ----------------------------------------------------------------------------------------- training curves


def _recon(entry):
    value = _finite(entry.get("train_loss1"))
    return value if value is not None else _finite(entry.get("train_loss"))


def _valid_metric(metric):
    def get(entry):
        valid = entry.get("valid")
        return _finite(valid.get(metric)) if isinstance(valid, dict) else None

    return get


def _label_frame(runs, getter):
    """Per label: DataFrame indexed by epoch with mean, min, max and n over that label's runs."""
    rows = []
    for i, run in enumerate(runs):
        for position, entry in enumerate(run.get("history") or []):
            if not isinstance(entry, dict):
                continue
            value = getter(entry)
            if value is not None:
                epoch = entry.get("epoch", position)
                rows.append((str(run.get("label", run.get("run_id", "?"))), i, epoch, value))
    if not rows:
        return {}
    data = pd.DataFrame(rows, columns=["label", "run", "epoch", "value"])
    # a resumed run may log an epoch twice: keep its last value
    data = data.drop_duplicates(["label", "run", "epoch"], keep="last")
    stats = data.groupby(["label", "epoch"])["value"].agg(["mean", "min", "max", "count"])
    return {label: frame.droplevel("label") for label, frame in stats.groupby(level="label")}


def plot_training_curves(runs, out_dir, valid_metric="ndcg@100", colors=None):
    """Per-epoch training curves of each label (file stem ``training_curves``).

    Four panels: reconstruction loss (``train_loss1``, else ``train_loss``), weighted KL
    (``train_loss2``), mean beta (``beta``) and the validation metric (``valid[valid_metric]``, on the
    epochs it was evaluated). One line per label: the mean over that label's runs (seeds), with a
    shaded min-max band where several runs contribute. Runs that did not finish (``status`` not
    ``RunStatus.OK``) are skipped, and so is a label in a panel where none of its runs logged that value.

    Args:
        runs: list of run results (``label``, ``status``, ``history``: list of per-epoch dicts).
        out_dir: folder to write into (created if missing).
        valid_metric: key of the ``valid`` dicts to draw.
        colors: optional label -> colour mapping; by default :func:`label_colors` of the ok runs.

    Returns:
        the paths written: ``[png, svg]``.
    """
    ok = [run for run in runs or [] if isinstance(run, dict) and is_ok(run)]
    labels = sorted({str(run.get("label", run.get("run_id", "?"))) for run in ok})
    colors = colors or label_colors(labels)
    panels = [
        ("reconstruction loss", "train_loss1 (else train_loss)", _recon),
        ("weighted KL", "train_loss2", lambda e: _finite(e.get("train_loss2"))),
        ("mean beta", "beta", lambda e: _finite(e.get("beta"))),
        (f"valid {valid_metric}", valid_metric, _valid_metric(valid_metric)),
    ]

    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (title, ylabel, getter) in zip(axes, panels):
        frames = _label_frame(ok, getter)
        for label in labels:
            if label not in frames:
                continue
            frame = frames[label]
            epochs = frame.index.to_numpy()
            few = len(epochs) <= 2  # a baseline's single epoch is invisible as a bare line
            ax.plot(epochs, frame["mean"], color=colors.get(label), label=label,
                    marker="o" if few else None, markersize=4)
            if frame["count"].max() > 1:
                ax.fill_between(epochs, frame["min"], frame["max"], color=colors.get(label), alpha=0.2,
                                linewidth=0)
        if not frames:
            _no_data(ax)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    fig.suptitle("Training curves (mean over seeds, band: min-max)")
    return _save(fig, out_dir, "training_curves")


# ------------------------------------------------------------------------------------------- metric bars
