"""The figures of recbole_beta.experiments.plots: files written, images readable, schedule data right, and
each figure drawing what it shows: its panels, labels, legends and marks (read from the SVG's text and from
the Figure that was saved)."""

import functools
import math

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from conftest import drawn_text
from recbole_beta.beta import RAMPS, PIControlBeta
from recbole_beta.experiments import plots, training_plots


def assert_figure(paths, out_dir, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.svg"]
    for path in paths:
        assert path.parent == out_dir
        assert path.is_file() and path.stat().st_size > 0
    image = mpimg.imread(paths[0])
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert paths[1].read_text().lstrip().startswith("<?xml")


@pytest.fixture
def saved(monkeypatch):
    """The Figures the plot functions save, in order: read back for their axes, lines and legends."""
    figures = []
    original = plots._save

    def keep(fig, out_dir, stem):
        figures.append(fig)
        return original(fig, out_dir, stem)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(training_plots, "_save", keep)
    return figures


def legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()] if legend is not None else []


def tick_texts(axis):
    return [t.get_text() for t in axis.get_ticklabels()]


def history(n_epochs, scale=1.0, vae=True, valid=True):
    rows = []
    for epoch in range(n_epochs):
        row = {"epoch": epoch, "train_loss": 500.0 * scale / (epoch + 1), "train_time": 1.0}
        if vae:
            row.update(train_loss1=490.0 * scale / (epoch + 1), train_loss2=2.0 + epoch, beta=min(0.2, 0.05 * epoch))
        if valid and epoch % 2 == 0:
            ndcg = 0.3 + 0.01 * epoch * scale
            row.update(valid_score=ndcg, valid={"ndcg@100": ndcg, "recall@20": ndcg - 0.05})
        rows.append(row)
    return rows


def run(label, seed, hist, status="ok"):
    return {"run_id": f"{label}-{seed}", "label": label, "model": label.split("-")[0], "seed": seed,
            "status": status, "history": hist, "test_result": {}, "best_valid_result": {}}


@functools.lru_cache(maxsize=1)
def default_series():
    return training_plots.beta_schedule_series(total_steps=400, activities=(5, 20, 80, 320), mean_activity=80.0)


class TestBetaScheduleSeries:
    @pytest.fixture
    def series(self):
        return default_series()

    def test_cyclical_linear_by_hand(self, series):
        # 4 cycles of 100 steps, rising over the first half of each to 0.2
        linear = series["cyclical/linear"]
        at = lambda step: linear[step - 1]  # noqa: E731 - series[0] is step 1
        assert series["step"][0] == 1 and len(linear) == 400
        assert at(1) == pytest.approx(0.0)
        assert at(26) == pytest.approx(0.1)
        assert at(51) == pytest.approx(0.2)
        assert at(100) == pytest.approx(0.2)
        assert at(101) == pytest.approx(0.0)
        assert at(126) == pytest.approx(0.1)

    def test_every_shape_spans_zero_to_max(self, series):
        for shape in RAMPS:
            values = series[f"cyclical/{shape}"]
            assert values[0] == pytest.approx(0.0) and values[50] == pytest.approx(0.2)
        # the cosine ramp is half way at the middle of the rise too, but slower at its start
        assert series["cyclical/cosine"][25] == pytest.approx(0.1)
        assert series["cyclical/cosine"][10] < series["cyclical/linear"][10]

    def test_annealed(self, series):
        annealed = series["annealed"]  # total_anneal_steps = 200
        assert annealed[100 - 1] == pytest.approx(min(0.2, 100 / 200))
        assert annealed[20 - 1] == pytest.approx(20 / 200)
        assert annealed[-1] == pytest.approx(0.2)

    def test_scaled_users(self, series):
        # normalize_activity with gamma 0.2: a user of mean activity (80) has beta 0.2, at every step
        for a in (5, 20, 80, 320):
            np.testing.assert_allclose(series[f"scaled/{a}"], 0.2 * a / 80)
            np.testing.assert_allclose(series[f"scaled_cyclical/{a}"], 0.2 * a / 80 * series["cyclical/linear"] / 0.2)

    def test_controlled_matches_the_controller(self, series):
        beta, kl = series["controlled/beta"], series["controlled/kl"]
        controller = PIControlBeta(kl_target=10.0, kp=0.01, ki=0.001, beta_min=0.0, beta_max=0.5)
        replay = []
        for value in kl:
            controller.step(kl=value)
            replay.append(controller.beta)
        np.testing.assert_allclose(beta, replay)
        assert np.all((beta >= 0) & (beta <= 0.5))
        # the synthetic KL responds to the beta of the step before
        expected_mean = 25 * np.exp(-8 * np.concatenate([[0.0], beta[:-1]]))
        assert np.abs(kl - expected_mean).max() < 6  # noise std 1
        # the controller brings the KL to its target
        assert abs(kl[200:].mean() - 10.0) < 1.0
        assert (series["controlled/target"] == 10.0).all()

    def test_seeded(self):
        a = training_plots.beta_schedule_series(total_steps=50, seed=3)
        b = training_plots.beta_schedule_series(total_steps=50, seed=3)
        np.testing.assert_array_equal(a["controlled/kl"], b["controlled/kl"])

    def test_config_overrides(self):
        s = training_plots.beta_schedule_series(
            total_steps=100,
            config={"anneal_cap": 0.5, "total_anneal_steps": 10, "n_cycles": 2, "cyclical": {"beta_max": 1.0}},
        )
        assert s["annealed"][5 - 1] == pytest.approx(0.5 * 1.0)  # 5/10 = 0.5 = cap
        assert s["annealed"][3 - 1] == pytest.approx(0.3)
        # 2 cycles of 50 steps, rising over 25 to 1.0
        assert s["cyclical/linear"][26 - 1] == pytest.approx(1.0)
        assert s["cyclical/linear"][51 - 1] == pytest.approx(0.0)
        # the per-panel dict does not reach the controller, whose beta_max stays 0.5
        assert s["controlled/beta"].max() <= 0.5

    def test_run_config_with_unset_and_unrelated_keys(self):
        # a run's config: None for unset keys, a list strategy, keys no strategy reads
        config = {"beta_strategy": ["scaled", "cyclical"], "kp": None, "epochs": 50, "mlp_hidden_size": [600],
                  "gamma": 0.1, "normalize_activity": True}
        s = training_plots.beta_schedule_series(total_steps=40, activities=(80,), mean_activity=80.0, config=config)
        np.testing.assert_allclose(s["scaled/80"], 0.1)
        np.testing.assert_allclose(s["cyclical/linear"], default_series()["cyclical/linear"][::10], atol=0.02)


def test_plot_beta_schedules(tmp_path, saved):
    out = tmp_path / "figs"
    paths = training_plots.plot_beta_schedules(out, total_steps=200, n_batches_per_epoch=4)
    assert_figure(paths, out, "beta_schedules")
    # one panel per strategy, titled with its name, each drawing its series of beta_schedule_series
    (fig,) = saved
    panels = {ax.get_title().split(":")[0].split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
    assert list(panels) == ["annealed", "cyclical", "scaled", "scaled x cyclical", "controlled"]
    series = training_plots.beta_schedule_series(total_steps=200)
    (line,) = panels["annealed"].get_lines()
    np.testing.assert_allclose(line.get_ydata(), series["annealed"])
    cyclical = panels["cyclical"].get_lines()
    assert [ln.get_label() for ln in cyclical] == list(RAMPS) == legend_texts(panels["cyclical"].get_legend())
    for shape, ln in zip(RAMPS, cyclical):
        np.testing.assert_allclose(ln.get_ydata(), series[f"cyclical/{shape}"])
    users = ["|x_u| = 5", "|x_u| = 20", "|x_u| = 80", "|x_u| = 320"]
    for name in ("scaled", "scaled x cyclical"):
        assert [ln.get_label() for ln in panels[name].get_lines()] == users
        assert legend_texts(panels[name].get_legend()) == users
    np.testing.assert_allclose(panels["controlled"].get_lines()[0].get_ydata(), series["controlled/beta"])
    assert legend_texts(panels["controlled"].get_legend()) == ["beta", "KL (synthetic)", "KL target 10"]
    text = drawn_text(paths[1])
    for ax in panels.values():
        assert ax.get_title() in text
    assert text.count("training step (batch)") == 5 and text.count("beta") >= 5 and "KL" in text
    assert "Beta per strategy over 200 steps (4 batches per epoch; top axis: epoch)" in text


def test_plot_training_curves(tmp_path, saved):
    runs = [
        run("MultVAE-annealed", 0, history(6)),
        run("MultVAE-annealed", 1, history(5, scale=1.1)),  # stopped early: the band covers what is there
        run("MultVAE-cyclical", 0, history(6, scale=0.9)),
        run("MultVAE-cyclical", 1, history(6), status="failed"),
        run("EASE", 0, [{"epoch": 0, "train_loss": 0.0, "train_time": 2.0, "valid_score": 0.4,
                         "valid": {"ndcg@100": 0.4}}]),
        run("Pop", 0, history(1, vae=False, valid=False)),
        run("Broken", 0, None),
    ]
    paths = training_plots.plot_training_curves(runs, tmp_path)
    assert_figure(paths, tmp_path, "training_curves")
    # one line per label that logged the panel's value, the mean over its ok runs; a band where several ran
    (fig,) = saved
    axes = fig.axes
    titles = ["reconstruction loss", "weighted KL", "mean beta", "valid ndcg@100"]
    assert [ax.get_title() for ax in axes] == titles
    lines = [{ln.get_label(): ln for ln in ax.get_lines()} for ax in axes]
    assert list(lines[0]) == ["EASE", "MultVAE-annealed", "MultVAE-cyclical", "Pop"]
    assert list(lines[1]) == list(lines[2]) == ["MultVAE-annealed", "MultVAE-cyclical"]
    assert list(lines[3]) == ["EASE", "MultVAE-annealed", "MultVAE-cyclical"]
    annealed = lines[0]["MultVAE-annealed"]
    np.testing.assert_array_equal(annealed.get_xdata(), range(6))
    assert annealed.get_ydata()[0] == pytest.approx((490.0 + 490.0 * 1.1) / 2)
    assert annealed.get_ydata()[5] == pytest.approx(490.0 / 6)  # seed 1 stopped after epoch 4
    cyclical = lines[0]["MultVAE-cyclical"]  # its failed run is left out
    np.testing.assert_allclose(cyclical.get_ydata(), [490.0 * 0.9 / (e + 1) for e in range(6)])
    np.testing.assert_array_equal(lines[3]["MultVAE-annealed"].get_xdata(), [0, 2, 4])  # the evaluated epochs
    assert lines[0]["EASE"].get_marker() == "o" and annealed.get_marker() == "None"
    assert [len(ax.collections) for ax in axes] == [1, 1, 1, 1]  # MultVAE-annealed's band, two seeds
    assert legend_texts(fig.legends[0]) == ["EASE", "MultVAE-annealed", "MultVAE-cyclical", "Pop"]
    text = drawn_text(paths[1])
    for word in titles + ["train_loss1 (else train_loss)", "train_loss2", "ndcg@100", "MultVAE-cyclical", "Pop",
                          "Training curves (mean over seeds, band: min-max)"]:
        assert word in text, word
    assert text.count("epoch") == 4 and "Broken" not in text and "no data" not in text


def test_plot_training_curves_nothing_ok(tmp_path, saved):
    paths = training_plots.plot_training_curves([run("x", 0, history(3), status="failed")], tmp_path)
    assert_figure(paths, tmp_path, "training_curves")
    (fig,) = saved
    assert not fig.legends and all(not ax.get_lines() for ax in fig.axes)
    text = drawn_text(paths[1])
    assert text.count("no data") == 4 and "x" not in text and "mean beta" in text


def summary_frame():
    rows = []
    for i, label in enumerate(["MultVAE-annealed", "MultVAE-cyclical", "MultVAE-scaled", "EASE"]):
        row = {"label": label, "n_seeds": 3 if label != "EASE" else 1}
        for j, metric in enumerate(("ndcg@100", "recall@20", "recall@50")):
            row[f"{metric}_mean"] = 0.35 + 0.02 * i + 0.05 * j
            row[f"{metric}_std"] = 0.004 if label != "EASE" else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def bars(ax):
    """label -> the heights of its bars, from the axes' bar containers."""
    return {c.get_label(): [patch.get_height() for patch in c] for c in ax.containers if isinstance(c, BarContainer)}


def test_plot_metric_bars(tmp_path, saved):
    paths = plots.plot_metric_bars(summary_frame(), tmp_path)
    assert_figure(paths, tmp_path, "metrics")
    # a group per metric, a bar per label at its mean
    labels = ["MultVAE-annealed", "MultVAE-cyclical", "MultVAE-scaled", "EASE"]
    ax = saved[0].axes[0]
    assert tick_texts(ax.xaxis) == ["ndcg@100", "recall@20", "recall@50"]
    assert legend_texts(ax.get_legend()) == labels
    heights = bars(ax)
    assert list(heights) == labels
    np.testing.assert_allclose(heights["MultVAE-scaled"], [0.39, 0.44, 0.49])
    text = drawn_text(paths[1])
    assert "Test metrics (mean ± std over 1 to 3 seeds per label)" in text and "score" in text
    assert all(name in text for name in labels + ["ndcg@100", "recall@20", "recall@50"])
    # a metric the summary lacks is left out, not an error
    paths = plots.plot_metric_bars(summary_frame(), tmp_path / "b", metrics=("ndcg@100", "mrr@10"))
    assert_figure(paths, tmp_path / "b", "metrics")
    assert tick_texts(saved[1].axes[0].xaxis) == ["ndcg@100"]
    assert "mrr@10" not in drawn_text(paths[1]) and "ndcg@100" in drawn_text(paths[1])


def test_plot_activity_buckets(tmp_path, saved):
    names = ["[1, 27]", "[28, 61]", "[62, 140]", "[141, 2000]"]
    rows = []
    for label in ["MultVAE-annealed", "MultVAE-scaled", "EASE"]:
        for index, name in enumerate(names):
            if label == "EASE" and index == 3:
                continue  # a missing bucket draws no bar
            rows.append({"label": label, "bucket": name, "bucket_index": index, "n_users": 150 - 10 * index,
                         "ndcg@100": 0.2 + 0.05 * index, "recall@20": 0.3})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order comes from bucket_index
    paths = plots.plot_activity_buckets(frame, tmp_path)
    assert_figure(paths, tmp_path, "activity_buckets")
    # the x labels are the buckets, in bucket_index order, with their users; a bar per label and bucket
    ax = saved[0].axes[0]
    assert tick_texts(ax.xaxis) == [f"{name}\n{150 - 10 * i} users" for i, name in enumerate(names)]
    assert legend_texts(ax.get_legend()) == ["EASE", "MultVAE-annealed", "MultVAE-scaled"]
    heights = bars(ax)
    np.testing.assert_allclose(heights["MultVAE-scaled"], [0.2, 0.25, 0.3, 0.35])
    assert heights["EASE"][:3] == pytest.approx([0.2, 0.25, 0.3]) and np.nan_to_num(heights["EASE"][3]) == 0
    text = drawn_text(paths[1])
    assert [t for t in text if t.startswith("[")] == names and "140 users" in text
    assert "Test ndcg@100 per user-activity bucket" in text and "ndcg@100" in text


def test_label_colors_are_stable():
    a = plots.label_colors(["b", "a", "c"])
    b = plots.label_colors(["c", "a", "b", "a"])
    assert a == b and len(set(a.values())) == 3
    many = plots.label_colors([f"m{i:02d}" for i in range(15)])
    assert len(set(many.values())) == 15


def test_colors_and_empty_inputs(tmp_path, saved):
    colors = plots.label_colors(["EASE", "MultVAE-annealed", "MultVAE-cyclical", "MultVAE-scaled"])
    paths = plots.plot_metric_bars(summary_frame().iloc[:2], tmp_path / "a", colors=colors)
    assert_figure(paths, tmp_path / "a", "metrics")
    # the bars take the mapping's colours, not those of the two labels drawn
    drawn = {c.get_label(): c.patches[0].get_facecolor() for c in saved[0].axes[0].containers
             if isinstance(c, BarContainer)}
    assert drawn == {label: colors[label] for label in ("MultVAE-annealed", "MultVAE-cyclical")}
    assert drawn["MultVAE-annealed"] != plots.label_colors(["MultVAE-annealed", "MultVAE-cyclical"])["MultVAE-annealed"]
    paths = plots.plot_activity_buckets(pd.DataFrame(columns=["label", "bucket", "bucket_index", "n_users"]),
                                        tmp_path / "b", colors=colors)
    assert_figure(paths, tmp_path / "b", "activity_buckets")
    assert "no ndcg@100 per bucket" in drawn_text(paths[1]) and not saved[1].axes[0].containers
    paths = training_plots.plot_training_curves([], tmp_path / "c", colors=colors)
    assert_figure(paths, tmp_path / "c", "training_curves")
    assert drawn_text(paths[1]).count("no data") == 4 and not saved[2].legends


def svg_text(paths):
    """The SVG of a figure saved with svg.fonttype none: its labels are text to look for."""
    return paths[1].read_text()


def significance_frame():
    rows = []
    for label, shift in (("MultVAE-cyclical", 0.0004), ("MultVAE-scaled", 0.003), ("Pop", -0.2), ("EASE", 0.01)):
        for j, metric in enumerate(("ndcg@100", "recall@20", "recall@50", "truncatedrecall@50")):
            diff = shift + 0.0005 * j
            rows.append({"label": label, "reference": "MultVAE-annealed", "metric": metric, "n_users": 943,
                         "n_seeds": 3, "mean_diff": diff, "ci_low": diff - 0.002, "ci_high": diff + 0.002,
                         "p_t": 0.01, "p_t_adj": 0.04 if label != "MultVAE-cyclical" else 0.3})
    return pd.DataFrame(rows)


def marks(ax, rows):
    """label (``rows``: the labels by row) -> (marker, filled, has an interval) of each point of a panel."""
    points = {}
    for container in ax.containers:
        line = container.lines[0]
        has_interval = container.has_xerr
        points[rows[int(line.get_ydata()[0])]] = (line.get_marker(), line.get_markerfacecolor() != "white",
                                                  has_interval)
    for line in ax.get_lines():
        if line.get_marker() in ("<", ">"):  # an interval off the scale: an arrow at the edge
            points[rows[int(line.get_ydata()[0])]] = (line.get_marker(), line.get_markerfacecolor() != "white", True)
    return points


def test_plot_paired_differences(tmp_path, saved):
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        paths = plots.plot_paired_differences(significance_frame(), tmp_path)
    assert_figure(paths, tmp_path, "paired_differences")
    # a panel per metric, a row per method, the axis naming the reference and the level of the intervals
    methods = ["MultVAE-cyclical", "MultVAE-scaled", "Pop", "EASE"]
    metrics = ["ndcg@100", "recall@20", "recall@50", "truncatedrecall@50"]
    panels = [ax for ax in saved[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == metrics
    assert all(ax.get_xlabel() == "Δ (method - MultVAE-annealed), 95% CI" for ax in panels)
    # filled: the adjusted p is below 0.05 (MultVAE-cyclical's 0.3 is not); Pop off the scale, an arrow left
    assert tick_texts(panels[0].yaxis) == methods  # the rows, shared by the panels
    for ax in panels:
        assert marks(ax, methods) == {"MultVAE-cyclical": ("o", False, True), "MultVAE-scaled": ("o", True, True),
                             "Pop": ("<", True, True), "EASE": ("o", True, True)}
    text = drawn_text(paths[1])
    assert all(name in text for name in methods + metrics)
    assert text.count("Δ (method - MultVAE-annealed), 95% CI") == 4
    assert ("Mean per-user difference from MultVAE-annealed with its 95% confidence interval "
            "(filled: Benjamini-Hochberg adjusted p < 0.05)") in text
    text = svg_text(paths)
    assert "MultVAE-annealed" in text and "truncatedrecall@50" in text
    # Pop's -0.2 is far off the scale of the others: drawn at the edge with its value, so the
    # differences of 0.001 stay readable
    assert "off scale: -0.2000 [-0.2020, -0.1980]" in text
    ax_limits = plots.difference_limits(significance_frame().query("metric == 'ndcg@100'"))
    assert ax_limits[0] > -0.05 and ax_limits[1] > 0.012
    # two methods: the one far off does not squash the other's interval to a dot
    two = pd.DataFrame({"mean_diff": [0.0002, 0.074], "ci_low": [-0.0002, 0.068], "ci_high": [0.0005, 0.081]})
    low, high = plots.difference_limits(two)
    assert -0.001 < low < -0.0002 and 0.0005 < high < 0.001


def test_plot_paired_differences_one_user_and_empty(tmp_path, saved):
    # no intervals (one user): the differences are points without error bars, still filled by their p
    frame = significance_frame().iloc[:2].assign(ci_low=math.nan, ci_high=math.nan)
    paths = plots.plot_paired_differences(frame, tmp_path / "a", confidence=0.9)
    assert_figure(paths, tmp_path / "a", "paired_differences")
    panels = [ax for ax in saved[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["ndcg@100", "recall@20"]
    assert tick_texts(panels[0].yaxis) == ["MultVAE-cyclical"]
    assert [marks(ax, ["MultVAE-cyclical"]) for ax in panels] == [{"MultVAE-cyclical": ("o", False, False)}] * 2
    text = drawn_text(paths[1])
    assert "MultVAE-cyclical" in text and text.count("Δ (method - MultVAE-annealed), 90% CI") == 2
    empty = pd.DataFrame(columns=["label", "reference", "metric", "mean_diff", "ci_low", "ci_high"])
    paths = plots.plot_paired_differences(empty, tmp_path / "b")
    assert_figure(paths, tmp_path / "b", "paired_differences")
    assert "no paired tests" in drawn_text(paths[1]) and not saved[1].axes[0].get_lines()


@pytest.mark.parametrize("measure", [None, "fold-in size |x_u|"])
def test_activity_axis_names_the_measure(tmp_path, measure):
    rows = [{"label": label, "bucket": "[1, 27]", "bucket_index": 0, "n_users": 100, "ndcg@100": 0.3}
            for label in ("a", "b")]
    frame = pd.DataFrame(rows)
    if measure:
        frame["activity_measure"] = measure
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        paths = plots.plot_activity_buckets(frame, tmp_path)
    assert (measure or "training interactions |x_u|") in svg_text(paths)


def test_same_data_same_svg(tmp_path):
    a = plots.plot_metric_bars(summary_frame(), tmp_path / "a")
    b = plots.plot_metric_bars(summary_frame(), tmp_path / "b")
    assert a[1].read_bytes() == b[1].read_bytes()
