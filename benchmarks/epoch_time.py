"""Epoch time, full-ranking evaluation time and memory of the plugin's models against RecBole's
MultiVAE: same data, same config, one process, runs interleaved (A B C A B C ...).

    python benchmarks/epoch_time.py --datasets ml-100k ml-20m@0.1 ml-20m@0.25 --reps 3
    python benchmarks/epoch_time.py --datasets ml-20m --reps 2 --max-batches 20

``ml-20m@f`` is synthetic data shaped like ML-20M after the Mult-VAE preprocessing (136,677 users
x 20,108 items, 10M interactions, power-law popularity and activity) with users and items scaled
by f and the density kept, made by ``recbole_beta.data.synthetic`` into benchmarks/data/.
Figures are medians over the repetitions with min and max; ratios are taken per repetition
against MultiVAE's measurement of the same round, then summarised.

Floors: the decoder's output-layer products alone, bare ``torch.mm`` at the variant's precision (float32,
or autocast's dtype under ``enable_amp``), each in the faster of its two layouts: three per training
batch (forward, input and weight gradients), one per evaluation batch (the forward over every
evaluated user).

On a CUDA machine (RecBole's ``use_gpu``/``gpu_id`` pick the device) the timed regions end with
``torch.cuda.synchronize()`` and memory is the CUDA allocator's peak over what was allocated
before the epoch, not the host's resident set; ``--device cpu`` forces the CPU.
"""

import argparse
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recbole.data import create_dataset  # noqa: E402
from recbole.utils import get_trainer as recbole_get_trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_beta.config import Config  # noqa: E402
from recbole_beta.data.dataset import create_dataset as plugin_create_dataset  # noqa: E402
from recbole_beta.data.synthetic import PRESETS, Shape, generate  # noqa: E402
from recbole_beta.precision import autocast_dtype  # noqa: E402
from recbole_beta.quick_start import data_preparation  # noqa: E402
from recbole_beta.registry import get_model, get_trainer, is_plugin_vae  # noqa: E402

DATA = ROOT / "benchmarks" / "data"

#: name -> (model, extra config)
VARIANTS = {
    "MultiVAE": ("MultiVAE", {}),
    "AnnealedBetaMultVAE": ("AnnealedBetaMultVAE", {}),
    "ConstantBetaMultVAE": ("ConstantBetaMultVAE", {}),
    "CyclicalBetaMultVAE": ("CyclicalBetaMultVAE", {}),
    "ScaledBetaMultVAE": ("ScaledBetaMultVAE", {}),
    "ControlledBetaMultVAE": ("ControlledBetaMultVAE", {}),
    "Scaled x Cyclical": ("BetaMultVAE", {"beta_strategy": ["scaled", "cyclical"]}),
    "Annealed, sparse input": ("AnnealedBetaMultVAE", {"sparse_input": True}),
    "Annealed, dense input": ("AnnealedBetaMultVAE", {"sparse_input": False}),
    # mixed precision (RecBole's enable_amp): bfloat16 products on the CPU, float16 on CUDA; RecBole's
    # MultiVAE trains under autocast and evaluates in float32, the plugin's models do both under it
    "MultiVAE, enable_amp": ("MultiVAE", {"enable_amp": True}),
    "Annealed, enable_amp": ("AnnealedBetaMultVAE", {"enable_amp": True}),
}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synchronize(device):
    """Wait for the device's queued work, so a timer read after it counts that work (CUDA runs async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Highest memory seen while the block runs, minus at its start: the process's resident set
    (sampled every 2 ms) on the CPU, the CUDA allocator's own peak on a GPU."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.extra = self.peak - self.start
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.start


def dataset_config(name):
    """Config keys for a dataset name: ml-100k as shipped, or ml-20m@f made on first use."""
    if name == "ml-100k":
        return "ml-100k", {}
    base, _, fraction = name.partition("@")
    fraction = float(fraction or 1)
    shape = PRESETS[base]
    scaled = Shape(n_users=round(shape.n_users * fraction), n_items=round(shape.n_items * fraction),
                   n_interactions=round(shape.n_interactions * fraction**2), min_user_inter=shape.min_user_inter,
                   timestamps=False)
    dataset = f"synthetic-{base}-{fraction:g}"
    if not (DATA / dataset / f"{dataset}.inter").is_file():
        print(f"generating {dataset}: {scaled.n_users:,} users x {scaled.n_items:,} items, "
              f"{scaled.total():,} interactions", flush=True)
        generate(DATA, dataset, scaled, seed=0)
    return dataset, {"data_path": str(DATA), "load_col": {"inter": ["user_id", "item_id"]}}


def layer_flops(model, batch):
    """FLOPs of the Linear layers for ``batch`` training rows: forward 2BIO, backward 4BIO
    (input and weight gradients), less the input gradient of the first layer."""
    total = 0
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        f = 2 * batch * layer.in_features * layer.out_features
        total += f * (3 if i else 2)
    return total


def matmul_gflops(m, k, n, device, reps=5):
    """Measured dense torch.mm throughput at the first layer's size."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def decoder_floor(model, rows, batch, device, dtype=torch.float32, backward=True, reps=3):
    """Seconds the decoder's output layer's matrix products alone take for ``rows`` rows in batches
    of ``batch``, and their GFLOP/s: the forward (B x H)(H x I) and, with ``backward`` (training),
    the input and weight gradients, bare ``torch.mm`` in ``dtype`` at those shapes, medians over
    ``reps``. Each product is timed in both layouts, C = A B and C^T = B^T A^T (operands and result
    contiguous in each), and counted at the faster: on this project's CPUs the forward runs about
    1.2x (float32) to 3x (bfloat16, AMX) faster item-major, as the plugin's evaluation computes it.
    An epoch (an evaluation) cannot take less on this device at this throughput; its multiple of
    this is the other work's price."""
    layer = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    items, hidden = layer.out_features, layer.in_features

    def fastest(a, b):
        """The median seconds of a @ b at the faster of its two layouts."""
        at, bt = b.t().contiguous(), a.t().contiguous()  # C^T = b^T a^T
        best = math.inf
        for x, y in ((a, b), (at, bt)):
            times = []
            for _ in range(reps + 1):  # the first warms up
                synchronize(device)
                start = time.perf_counter()
                torch.mm(x, y)
                synchronize(device)
                times.append(time.perf_counter() - start)
            best = min(best, statistics.median(times[1:]))
        return best

    def products(b):
        h = torch.randn(b, hidden, device=device, dtype=dtype)
        w = torch.randn(items, hidden, device=device, dtype=dtype)
        g = torch.randn(b, items, device=device, dtype=dtype)
        seconds = fastest(h, w.t().contiguous())  # the forward, h W^T
        if backward:
            seconds += fastest(g, w) + fastest(g.t().contiguous(), h)  # g W and g^T h
        return seconds

    full, last = divmod(rows, batch)
    seconds = full * products(batch) + (products(last) if last else 0.0)
    return seconds, (6 if backward else 2) * rows * hidden * items / seconds / 1e9


def precision_of(trainer):
    """The dtype of the variant's products: autocast's where its trainer runs under it, else float32."""
    return autocast_dtype(trainer.device) if trainer.enable_amp else torch.float32


def build(variant, dataset, extra_config, train_data):
    model_name, variant_config = VARIANTS[variant]
    config = Config(model=model_name, dataset=dataset, argv=[],
                    config_dict={**extra_config, **variant_config, "state": "ERROR", "show_progress": False})
    init_seed(config["seed"], config["reproducibility"])
    model_class = get_model(model_name)
    model = model_class(config, train_data._dataset).to(config["device"])
    # RecBole's models on RecBole's own trainer (its collector included), as RecBole runs them
    trainer_of = get_trainer if is_plugin_vae(model_class) else recbole_get_trainer
    trainer = trainer_of(config["MODEL_TYPE"], model_name)(config, model)
    trainer.eval_collector.data_collect(train_data)
    return model, trainer


def limited(loader, max_batches):
    if not max_batches:
        return loader
    return [batch for _, batch in zip(range(max_batches), loader)]


def bench_dataset(name, variants, reps, max_batches, eval_users, overrides):
    dataset, extra = dataset_config(name)
    extra = {**extra, **overrides}
    config = Config(model="MultiVAE", dataset=dataset, argv=[], config_dict={**extra, "state": "ERROR"})
    device = config["device"]
    init_seed(config["seed"], config["reproducibility"])
    start = time.perf_counter()
    data = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, data)
    # the plugin's VAEs are evaluated on their own loaders (recbole_beta.data.fullsort), RecBole's
    # models on RecBole's: the same split (same seed, same data), each path's own batches
    valid_of = {}
    plugin = [v for v in variants if is_plugin_vae(get_model(VARIANTS[v][0]))]
    if plugin and eval_users:
        plugin_config = Config(model=VARIANTS[plugin[0]][0], dataset=dataset, argv=[],
                               config_dict={**extra, "state": "ERROR"})
        init_seed(plugin_config["seed"], plugin_config["reproducibility"])
        _, plugin_valid, _ = data_preparation(plugin_config, plugin_create_dataset(plugin_config))
        if not (plugin_valid.sample_size == valid_data.sample_size
                and torch.equal(torch.as_tensor(plugin_valid.uid_list), torch.as_tensor(valid_data.uid_list))
                and plugin_valid.uid2items_num.tolist() == valid_data.uid2items_num.tolist()):
            raise SystemExit("the plugin's split differs from RecBole's: the evaluations would not be comparable")
        valid_of = dict.fromkeys(plugin, plugin_valid)
    print(f"{name}: {data.user_num - 1:,} users x {data.item_num - 1:,} items, {data.inter_num:,} interactions "
          f"(loaded in {time.perf_counter() - start:.0f} s)", flush=True)
    built = {}
    for variant in variants:
        built[variant] = build(variant, dataset, extra, train_data)
        first = built[variants[0]][0]
        # RecBole's models pad the users' histories into the same dense matrices (gigabytes on
        # ml-20m; the plugin's hold a CSR matrix): keep one copy, as separate runs would each hold one
        if hasattr(built[variant][0], "history_item_id") and hasattr(first, "history_item_id"):
            built[variant][0].history_item_id = first.history_item_id
            built[variant][0].history_item_value = first.history_item_value
        gc.collect()
    batches = math.ceil(train_data.sample_size / config["train_batch_size"])
    timed_batches = min(batches, max_batches) if max_batches else batches

    def train_once(variant):
        model, trainer = built[variant]
        loader = limited(train_data, max_batches)
        # every timed epoch starts as one after an evaluation does (the plugin's models free their
        # training buffer in eval mode), whether or not an evaluation ran since the last epoch
        model.eval()
        gc.collect()
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            trainer._train_epoch(loader, 0)
            synchronize(device)
            seconds = time.perf_counter() - start
        return seconds, mem.extra

    def eval_once(variant):
        model, trainer = built[variant]
        synchronize(device)
        start = time.perf_counter()
        trainer.evaluate(valid_of.get(variant, valid_data), load_best_model=False)
        synchronize(device)
        return time.perf_counter() - start

    for variant in variants:  # warm-up: allocator, threads, first-touch
        model, trainer = built[variant]
        trainer._train_epoch(limited(train_data, 2), 0)
    results = {v: {"train": [], "memory": [], "eval": []} for v in variants}
    for rep in range(reps):
        for variant in variants:  # interleaved: A B C ... A B C ...
            seconds, memory = train_once(variant)
            results[variant]["train"].append(seconds)
            results[variant]["memory"].append(memory)
            print(f"    {variant}: train {seconds:.2f} s, extra memory {memory / 2**20:.0f} MiB", flush=True)
        for variant in variants:
            if eval_users:
                results[variant]["eval"].append(eval_once(variant))
                print(f"    {variant}: eval {results[variant]['eval'][-1]:.2f} s", flush=True)
        print(f"  round {rep + 1}/{reps} done", flush=True)

    model = built[variants[0]][0]
    rows_timed = min(train_data.sample_size, timed_batches * config["train_batch_size"])
    flops = layer_flops(model, rows_timed)
    peak_mm = matmul_gflops(config["train_batch_size"], data.item_num, config["mlp_hidden_size"][0], device)
    precisions = {v: precision_of(built[v][1]) for v in variants}
    floors = {dtype: decoder_floor(model, rows_timed, config["train_batch_size"], device, dtype)
              for dtype in dict.fromkeys(precisions.values())}
    # evaluation: every evaluated user's forward product, in batches of eval_batch_size // items users
    eval_rows, eval_batch = len(valid_data.uid_list), max(config["eval_batch_size"] // data.item_num, 1)
    eval_floors = {dtype: decoder_floor(model, eval_rows, eval_batch, device, dtype, backward=False)
                   for dtype in dict.fromkeys(precisions.values())} if eval_users else {}
    rows = []
    reference = results.get("MultiVAE")
    for variant in variants:
        r, dtype = results[variant], precisions[variant]
        floor_s, floor_gflops = floors[dtype]
        row = {"dataset": name, "variant": variant, "precision": str(dtype).removeprefix("torch."),
               "batches": timed_batches, "batches_per_epoch": batches,
               "train_s": r["train"], "eval_s": r["eval"], "epoch_extra_rss_mb": [m / 2**20 for m in r["memory"]],
               "memory": "CUDA" if device.type == "cuda" else "RSS",
               "train_gflops": flops / statistics.median(r["train"]) / 1e9, "matmul_gflops": peak_mm,
               "decoder_floor_s": floor_s, "decoder_floor_gflops": floor_gflops,
               "x_floor": [t / floor_s for t in r["train"]]}
        if r["eval"]:
            row["eval_floor_s"], row["eval_floor_gflops"] = eval_floors[dtype]
            row["eval_x_floor"] = [t / row["eval_floor_s"] for t in r["eval"]]
        if reference:
            row["train_ratio"] = [a / b for a, b in zip(r["train"], reference["train"])]
            if r["eval"]:
                row["eval_ratio"] = [a / b for a, b in zip(r["eval"], reference["eval"])]
        rows.append(row)
    return rows


def summary(values, digits=2):
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def markdown(rows):
    memory = rows[0]["memory"] if rows else "RSS"
    header = ["dataset", "model", "precision", "train s (batches)", "x MultiVAE", "eval s", "x MultiVAE",
              f"extra {memory} MiB", "GFLOP/s (mm peak)", "decoder floor s (GFLOP/s)", "x floor",
              "eval floor s (GFLOP/s)", "eval x floor"]
    cells = [[row["dataset"], row["variant"], row["precision"],
              f"{summary(row['train_s'])} ({row['batches']}/{row['batches_per_epoch']})",
              summary(row.get("train_ratio", []), 3), summary(row["eval_s"]), summary(row.get("eval_ratio", []), 3),
              summary(row["epoch_extra_rss_mb"], 0), f"{row['train_gflops']:.1f} ({row['matmul_gflops']:.0f})",
              f"{row['decoder_floor_s']:.2f} ({row['decoder_floor_gflops']:.0f})", summary(row["x_floor"]),
              f"{row['eval_floor_s']:.2f} ({row['eval_floor_gflops']:.0f})" if "eval_floor_s" in row else "-",
              summary(row.get("eval_x_floor", []))]
             for row in rows]
    # disable_numparse: the cells are written as formatted here, not re-read as numbers
    return pd.DataFrame(cells, columns=header).to_markdown(index=False, disable_numparse=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-20m@0.1"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=0, help="time only the first N batches of an epoch")
    parser.add_argument("--no-eval", action="store_true", help="skip the full-ranking evaluation timing")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="auto: CUDA where RecBole finds it (use_gpu, gpu_id), else the CPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read the options above as config keys
    if "MultiVAE" not in args.variants:
        args.variants.insert(0, "MultiVAE")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs", flush=True)
    if args.device == "auto" and torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}", flush=True)
    overrides = {"use_gpu": False} if args.device == "cpu" else {}
    rows = []
    for name in args.datasets:
        rows += bench_dataset(name, args.variants, args.reps, args.max_batches, not args.no_eval, overrides)
    print()
    print("medians [min, max] over the rounds; ratios per round against MultiVAE")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
