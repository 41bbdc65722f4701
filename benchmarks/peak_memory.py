"""Whole-process peak memory of a run: RecBole's MultiVAE against the plugin's models.

Each variant runs in a fresh process from data loading to the test evaluation (``epochs`` training
epochs, the validation after each, then the test), the way a user's run goes. The figure is the
child's peak resident set, from the kernel (``wait4``'s rusage), so loading and splitting count as
much as training. The reference, "MultiVAE (RecBole)", is RecBole's own ``run_recbole`` with the
plugin's evaluation settings (properties/overall.yaml: split, metrics, eval batch size): RecBole's
reader, samplers, loaders, padded history matrices and collector. "MultiVAE (plugin runner)" is
the same model through ``run_recbole_beta``, which reads the data with the plugin's reader and
collects with its collector but keeps RecBole's samplers, loaders and the model's padded
matrices. The plugin's models take the plugin's path throughout (CSR history, lean full-ranking
loaders). On a CUDA machine the CUDA allocator's peak is printed too.

    python benchmarks/peak_memory.py --datasets ml-100k ml-20m@0.1
    python benchmarks/peak_memory.py --datasets ml-20m --epochs 1      # about 25 minutes, 2 cores

``ml-20m@f``: the synthetic ML-20M shape of benchmarks/epoch_time.py, made on first use.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> (runner, model, extra config); the runner is "recbole" (RecBole's run_recbole) or "plugin"
VARIANTS = {
    "MultiVAE (RecBole)": ("recbole", "MultiVAE", {}),
    "MultiVAE (plugin runner)": ("plugin", "MultiVAE", {}),
    "AnnealedBetaMultVAE": ("plugin", "AnnealedBetaMultVAE", {}),
    "AnnealedBetaMultVAE, dense input": ("plugin", "AnnealedBetaMultVAE", {"sparse_input": False}),
    "ScaledBetaMultVAE": ("plugin", "ScaledBetaMultVAE", {}),
}
REFERENCE = "MultiVAE (RecBole)"

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
if {runner!r} == "recbole":
    from recbole.quick_start import run_recbole as run
else:
    from recbole_beta.quick_start import run_recbole_beta as run
start = time.perf_counter()
result = run({model!r}, {dataset!r}, config_dict={config!r}, saved=False)
seconds = time.perf_counter() - start
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print("RESULT " + json.dumps({{"seconds": seconds, "test": dict(result["test_result"]), "cuda_peak": cuda}}))
"""


def recbole_settings():
    """The plugin's evaluation and training defaults (properties/overall.yaml) that RecBole's own
    Config knows, so RecBole's run is evaluated as the plugin's runs are."""
    import yaml

    plugin_only = {"results_dir", "download", "eval_protocol", "heldout_users", "heldout_ratio", "split_seed"}
    defaults = yaml.safe_load((ROOT / "properties" / "overall.yaml").read_text())
    return {key: value for key, value in defaults.items() if key not in plugin_only} | {"train_neg_sample_args": None}


def run_child(runner, model, dataset, config):
    code = CHILD.format(root=str(ROOT), runner=runner, model=model, dataset=dataset, config=config)
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=os.environ.get("TMPDIR", "/tmp"))
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{model} on {dataset} failed:\n{output[-3000:]}")
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "peak_rss": usage.ru_maxrss * 1024}


def main():
    from epoch_time import dataset_config  # the synthetic shapes and where they are made

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-20m@0.1"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = parser.parse_args()
    if REFERENCE not in args.variants:
        args.variants.insert(0, REFERENCE)
    rows = []
    for name in args.datasets:
        dataset, extra = dataset_config(name)
        for variant in args.variants:
            runner, model, variant_config = VARIANTS[variant]
            base = recbole_settings() if runner == "recbole" else {"results_dir": None}
            config = {**base, **extra, **variant_config, "epochs": args.epochs, "state": "ERROR",
                      "show_progress": False}
            started = time.perf_counter()
            measured = run_child(runner, model, dataset, config)
            rows.append({"dataset": name, "variant": variant, **measured})
            print(f"{name} {variant}: peak {measured['peak_rss'] / 2**30:.2f} GiB, "
                  f"{time.perf_counter() - started:.0f} s, test {measured['test']}", flush=True)
    print()
    cells = []
    for row in rows:
        reference = next(r for r in rows if r["dataset"] == row["dataset"] and r["variant"] == REFERENCE)
        cuda = "-" if row["cuda_peak"] is None else f"{row['cuda_peak'] / 2**30:.2f}"
        cells.append([row["dataset"], row["variant"], f"{row['peak_rss'] / 2**30:.2f}",
                      f"{row['peak_rss'] / reference['peak_rss']:.3f}", cuda, f"{row['seconds']:.0f}",
                      f"{row['test'].get('ndcg@100', float('nan')):.4f}"])
    header = ["dataset", "model", "peak RSS GiB", f"x {REFERENCE}", "CUDA peak GiB", "run s", "test NDCG@100"]
    # disable_numparse: the cells are written as formatted here, not re-read as numbers
    print(pd.DataFrame(cells, columns=header).to_markdown(index=False, disable_numparse=True))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
