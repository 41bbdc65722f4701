"""The benchmark harness (benchmarks/epoch_time.py) measures what it says: every model trains and is
evaluated on the same data, ratios are per round against MultiVAE, FLOPs are counted by hand.
No timing is asserted here: the figures themselves belong to the benchmark's output."""

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

from conftest import plain_tables
from recbole_beta.precision import cpu_has_bfloat16

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("epoch_time", ROOT / "benchmarks" / "epoch_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_flops_by_hand(harness):
    # 1682 -> 600 -> 128 encoder, 64 -> 600 -> 1682 decoder: forward 2*B*in*out per layer,
    # backward twice that, except no input gradient for the first layer (its input is data)
    model = torch.nn.Sequential(torch.nn.Linear(1682, 600), torch.nn.Linear(600, 128),
                                torch.nn.Linear(64, 600), torch.nn.Linear(600, 1682))
    batch = 10
    first = 2 * batch * 1682 * 600
    rest = 2 * batch * (600 * 128 + 64 * 600 + 600 * 1682)
    assert harness.layer_flops(model, batch) == 2 * first + 3 * rest


@pytest.fixture(scope="module")
def synthetic_tenth(harness, tmp_path_factory):
    """ml-20m@0.1 made by the harness into a temporary folder (not the repo's benchmarks/data)."""
    harness.DATA = tmp_path_factory.mktemp("bench-data")
    return harness.dataset_config("ml-20m@0.1")


def test_synthetic_shape_scaled_with_density_kept(harness, synthetic_tenth):
    dataset, extra = synthetic_tenth
    assert dataset == "synthetic-ml-20m-0.1"
    assert extra["data_path"] == str(harness.DATA)
    lines = (harness.DATA / dataset / f"{dataset}.inter").read_text().splitlines()
    users = {line.split("\t")[0] for line in lines[1:]}
    items = {line.split("\t")[1] for line in lines[1:]}
    # 136,677 users x 20,108 items x 10M interactions: users and items x 0.1, interactions x 0.1^2
    assert len(lines) - 1 == 100_000
    assert len(users) == 13_668  # every user has at least 5 interactions
    assert 0.9 * 2_011 <= len(items) <= 2_011


@pytest.mark.slow
def test_interleaved_rounds_on_ml100k(harness, monkeypatch):
    floors = {}  # (dtype, backward) -> what decoder_floor measured

    real_floor = harness.decoder_floor
    signature = inspect.signature(real_floor)

    def recorded(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        floors[(call.arguments["dtype"], call.arguments["backward"])] = measured = real_floor(*args, **kwargs)
        return measured

    monkeypatch.setattr(harness, "decoder_floor", recorded)
    variants = ["MultiVAE", "ScaledBetaMultVAE", "Annealed, sparse input", "Annealed, enable_amp"]
    rows = harness.bench_dataset("ml-100k", variants, reps=2, max_batches=0, eval_users=True,
                                 overrides={"use_gpu": False})
    assert [row["variant"] for row in rows] == variants
    reference = rows[0]
    for row in rows:
        assert row["dataset"] == "ml-100k"
        assert row["batches"] == row["batches_per_epoch"] == 1  # 944 user ids, batch 2048
        assert len(row["train_s"]) == len(row["eval_s"]) == len(row["epoch_extra_rss_mb"]) == 2
        assert all(t > 0 for t in row["train_s"] + row["eval_s"])
        assert row["memory"] == "RSS"
        # ratios pair each round with MultiVAE's measurement of the same round
        assert row["train_ratio"] == [a / b for a, b in zip(row["train_s"], reference["train_s"])]
        assert row["eval_ratio"] == [a / b for a, b in zip(row["eval_s"], reference["eval_s"])]
    assert reference["train_ratio"] == [1.0, 1.0]
    for row in rows:
        # the floor: the output layer's three products (forward, input and weight gradients) for
        # the 944 user rows of an epoch, 944 x 600 x 1683 multiply-adds each (1,682 items and the padding id)
        assert row["decoder_floor_s"] > 0
        assert row["decoder_floor_gflops"] * row["decoder_floor_s"] * 1e9 == pytest.approx(6 * 944 * 600 * 1683)
        assert row["x_floor"] == [t / row["decoder_floor_s"] for t in row["train_s"]]
        # evaluation's floor: the forward product alone for the 943 evaluated users, in batches of
        # eval_batch_size // 1683 users
        assert row["eval_floor_gflops"] * row["eval_floor_s"] * 1e9 == pytest.approx(2 * 943 * 600 * 1683)
        assert row["eval_x_floor"] == [t / row["eval_floor_s"] for t in row["eval_s"]]
    # each precision's floor at its own rate: enable_amp's products in autocast's dtype (where the CPU has it)
    amp = rows[-1]
    assert amp["precision"] == ("bfloat16" if cpu_has_bfloat16() else "float32")
    assert all(row["precision"] == "float32" for row in rows[:-1])
    # each row's floors are the ones measured in its own precision
    amp_dtype = torch.bfloat16 if cpu_has_bfloat16() else torch.float32
    assert set(floors) == {(dtype, backward) for dtype in (torch.float32, amp_dtype) for backward in (True, False)}
    for row, dtype in [(reference, torch.float32), (amp, amp_dtype)]:
        assert (row["decoder_floor_s"], row["decoder_floor_gflops"]) == floors[(dtype, True)]
        assert (row["eval_floor_s"], row["eval_floor_gflops"]) == floors[(dtype, False)]
    table = harness.markdown(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| ml-100k | Annealed, sparse input |" in plain_tables(table)
    assert "extra RSS MiB" in table and "decoder floor s" in table and "eval floor s" in table
    assert "| ml-100k | Annealed, enable_amp | bfloat16 |" in plain_tables(table) or not cpu_has_bfloat16()


@pytest.mark.slow
def test_max_batches_limits_the_timed_epoch(harness, synthetic_tenth):
    rows = harness.bench_dataset("ml-20m@0.1", ["MultiVAE", "AnnealedBetaMultVAE"], reps=1, max_batches=2,
                                 eval_users=False, overrides={"use_gpu": False})
    assert [row["variant"] for row in rows] == ["MultiVAE", "AnnealedBetaMultVAE"]
    for row in rows:
        # 13,669 user ids (the padding id 0 included) in batches of 2048: 7 per epoch, 2 timed
        assert (row["batches"], row["batches_per_epoch"]) == (2, 7)
        assert len(row["train_s"]) == 1
        assert row["eval_s"] == [] and "eval_ratio" not in row


@pytest.mark.slow
def test_train_step_profile_splits_a_step_into_products_and_float32_passes(capsys):
    """benchmarks/train_step_profile.py on a small shape: a row per precision, and the profiler's split
    finds both the products and the float32 passes in a step (each > 0 ms: neither class is empty)."""
    spec = importlib.util.spec_from_file_location("train_step_profile", ROOT / "benchmarks" / "train_step_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--batch", "64", "--items", "3000", "--hidden", "32", "--per-user", "10", "--block", "1024", "--reps", "3"]
    step = module.Step(module.argparse.Namespace(batch=64, items=3000, hidden=32, per_user=10, block=1024), None)
    products, rest = module.split_ms(step, 2)
    assert products > 0 and rest > 0
    module.main(args)
    lines = plain_tables(capsys.readouterr().out).splitlines()
    rows = [line.split(" | ")[0].removeprefix("| ") for line in lines
            if line.startswith("| float") or line.startswith("| bfloat")]
    assert rows == ["float32", str(module.autocast_dtype(torch.device("cpu"))).removeprefix("torch.")]
