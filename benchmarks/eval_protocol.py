"""Full-ranking evaluation time per epoch under each evaluation protocol, on the same data.

    python benchmarks/eval_protocol.py --datasets ml-20m@0.25 ml-20m --reps 3

``weak`` (RecBole's split) evaluates every user each epoch; ``strong`` (Liang et al.'s held-out
users) evaluates the validation users only: 10,000 of ML-20M's 136,677, scaled with the shape
(``ml-20m@f``: synthetic data shaped like ML-20M after the Mult-VAE preprocessing, see
epoch_time.py). The model is the plugin's default (BetaMultVAE, untrained: scoring time does not
depend on the weights). Ratios are against the median of the weak protocol's evaluations.
"""

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from epoch_time import dataset_config, summary, synchronize  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_beta.config import Config  # noqa: E402
from recbole_beta.quick_start import prepare  # noqa: E402

#: ML-20M after the preprocessing: 136,677 users, 10,000 held out for validation (and as many for test)
ML20M_USERS, ML20M_HELDOUT = 136_677, 10_000


def heldout_users(name):
    _, _, fraction = name.partition("@")
    return max(1, round(ML20M_HELDOUT * float(fraction or 1))) if name.startswith("ml-20m") else 0.1


def bench(name, reps, overrides):
    dataset, extra = dataset_config(name)
    protocols = {
        "weak": {},
        "strong": {"eval_protocol": "strong", "heldout_users": heldout_users(name)},
    }
    times, users = {}, {}
    # one protocol at a time: at the ML-20M shape each holds RecBole's padded history matrices
    # (gigabytes), and the gap between them is far larger than what interleaving would correct
    for protocol, keys in protocols.items():
        config = Config(model="BetaMultVAE", dataset=dataset, argv=[],
                        config_dict={**extra, **keys, **overrides, "state": "ERROR", "show_progress": False})
        init_seed(config["seed"], config["reproducibility"])
        start = time.perf_counter()
        _, (train_data, valid_data, _), model, trainer = prepare(config)
        trainer.eval_collector.data_collect(train_data)
        users[protocol] = len(valid_data.uid_list)
        print(f"{name} {protocol}: {users[protocol]:,} users to evaluate, {valid_data._dataset.item_num - 1:,} "
              f"items (built in {time.perf_counter() - start:.0f} s)", flush=True)
        trainer.evaluate(valid_data, load_best_model=False)  # warm-up
        times[protocol] = []
        for _ in range(reps):
            synchronize(config["device"])
            start = time.perf_counter()
            trainer.evaluate(valid_data, load_best_model=False)
            synchronize(config["device"])
            times[protocol].append(time.perf_counter() - start)
            print(f"    {protocol}: {times[protocol][-1]:.2f} s", flush=True)
        del train_data, valid_data, model, trainer
        gc.collect()
    weak = statistics.median(times["weak"])
    return [{"dataset": name, "protocol": p, "users": users[p], "eval_s": times[p],
             "ratio_to_weak": [t / weak for t in times[p]]} for p in protocols]


def markdown(rows):
    cells = [[row["dataset"], row["protocol"], f"{row['users']:,}", summary(row["eval_s"]),
              summary(row["ratio_to_weak"], 3)] for row in rows]
    # disable_numparse: the cells are written as formatted here, not re-read as numbers
    return pd.DataFrame(cells, columns=["dataset", "protocol", "users evaluated", "eval s per epoch", "x weak"]
                        ).to_markdown(index=False, disable_numparse=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-20m@0.1"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    args = parser.parse_args()
    rows = []
    for name in args.datasets:
        rows.extend(bench(name, args.reps, {}))
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    for row in rows:
        print(f"{row['dataset']} {row['protocol']}: median {statistics.median(row['eval_s']):.2f} s", flush=True)


if __name__ == "__main__":
    main()
