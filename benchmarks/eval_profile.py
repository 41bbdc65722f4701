"""Where a full-ranking evaluation's time goes: the plugin's evaluation pass cut into its pieces,
beside the floor (the decoder's forward product alone).

    python benchmarks/eval_profile.py --datasets ml-20m --reps 3
    python benchmarks/eval_profile.py --datasets ml-20m@0.25 --variants float32 bfloat16

Each piece is timed where it runs, in the trainer's own ``evaluate`` (RecBole's loop, the plugin's
trainer, loaders and collector) by timing wrappers on the objects that do it:

- **batches**: the loader's ``collate_fn`` (the batch's users, histories and positives);
- **encode**: the model's ``ranking_scores`` less the output layer (the input rows, the encoder, the
  decoder's hidden layers);
- **score**: the decoder's output layer (on the sparse path W h^T + b into the reused item-major buffer,
  :func:`recbole_beta.model.sparse.linear_into_workspace`; on the dense path RecBole's ``nn.Linear``);
- **mask**: ``_full_sort_batch_eval`` less ``ranking_scores`` (-inf on the padding item and on
  each user's history);
- **top-k**: the collector's top-k of each batch's scores (``recbole_beta.collector.topk_indices``);
- **hits**: the rest of the collector's batch step (the top-k's hits and the users' target counts);
- **metric**: joining the batches and RecBole's metric classes (NDCG@k, Recall@k);
- **other**: the rest of ``evaluate`` (its loop, moving tensors).

The floor is bare ``torch.mm`` at the output layer's shape in the variant's precision, in the
faster of its two layouts (``epoch_time.decoder_floor``); "x floor" is the evaluation's time over it. ``ml-20m@f`` is
synthetic data shaped like ML-20M (see epoch_time.py). The model is untrained: the time does not
depend on the weights (the top-k's scores are a trained model's in distribution only roughly).
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from epoch_time import dataset_config, decoder_floor, precision_of, summary, synchronize  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from recbole_beta.config import Config  # noqa: E402
from recbole_beta.model import sparse_input  # noqa: E402
from recbole_beta.quick_start import prepare  # noqa: E402

PIECES = ("batches", "encode", "score", "mask", "top-k", "hits", "metric", "other")
#: variant -> config keys
VARIANTS = {"float32": {}, "bfloat16": {"enable_amp": True}}


class Stopwatch:
    """Seconds per piece, accumulated by the wrappers :meth:`wrap` puts on objects' methods."""

    def __init__(self, device):
        self.device = device
        self.seconds = defaultdict(float)
        self._wrapped = []  # (owner, name, the instance attribute it had, if any)

    def wrap(self, owner, name, piece):
        """Replace ``owner.name`` (a method, as an instance attribute) by a timed call of it."""
        inner = getattr(owner, name)
        self._wrapped.append((owner, name, vars(owner).get(name)))

        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds[piece] += time.perf_counter() - start

        setattr(owner, name, timed)

    def unwrap(self):
        """Put every wrapped method back as it was."""
        for owner, name, own in reversed(self._wrapped):
            if own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, own)
        self._wrapped.clear()


def instrument(trainer, model, eval_data, watch):
    """Time the pieces of ``trainer.evaluate(eval_data)`` (names as in :data:`PIECES`; wrapped
    totals: ``predict`` holds score, ``batch_eval`` predict, ``collect`` top-k, ``evaluate`` all)."""
    watch.wrap(eval_data, "collate_fn", "batches")
    watch.wrap(model, "ranking_scores", "predict")
    if model.sparse_input is not None:  # the output layer writes into the reused buffer
        watch.wrap(sparse_input, "linear_into_workspace", "score")
    else:
        watch.wrap(model.decoder[-1], "forward", "score")
    watch.wrap(trainer, "_full_sort_batch_eval", "batch_eval")
    watch.wrap(trainer.eval_collector, "eval_batch_collect", "collect")
    watch.wrap(trainer.eval_collector, "topk_items", "top-k")
    watch.wrap(trainer.eval_collector, "get_data_struct", "join")
    watch.wrap(trainer.evaluator, "evaluate", "metrics")
    watch.wrap(trainer, "evaluate", "evaluate")


def pieces(seconds):
    """The exclusive time of each piece of :data:`PIECES` from the wrappers' inclusive totals."""
    s = seconds
    own = {
        "batches": s["batches"],
        "encode": s["predict"] - s["score"],
        "score": s["score"],
        "mask": s["batch_eval"] - s["predict"],
        "top-k": s["top-k"],
        "hits": s["collect"] - s["top-k"],
        "metric": s["join"] + s["metrics"],
    }
    own["other"] = s["evaluate"] - sum(own.values())
    return {**own, "total": s["evaluate"]}


def profile(name, variants, reps, overrides):
    dataset, extra = dataset_config(name)
    rows = []
    for variant in variants:
        config = Config(model="AnnealedBetaMultVAE", dataset=dataset, argv=[],
                        config_dict={**extra, **VARIANTS[variant], **overrides, "state": "ERROR",
                                     "show_progress": False})
        init_seed(config["seed"], config["reproducibility"])
        start = time.perf_counter()
        _, (train_data, valid_data, _), model, trainer = prepare(config)
        trainer.eval_collector.data_collect(train_data)
        print(f"{name} {variant}: {len(valid_data.uid_list):,} users x {valid_data._dataset.item_num - 1:,} items "
              f"(built in {time.perf_counter() - start:.0f} s)", flush=True)
        trainer.evaluate(valid_data, load_best_model=False)  # warm-up
        rounds = []
        for _ in range(reps):
            watch = Stopwatch(trainer.device)
            instrument(trainer, model, valid_data, watch)
            trainer.evaluate(valid_data, load_best_model=False)
            watch.unwrap()
            rounds.append(pieces(watch.seconds))
            print("    " + ", ".join(f"{k} {v:.2f}" for k, v in rounds[-1].items()), flush=True)
        users = len(valid_data.uid_list)
        batch = max(config["eval_batch_size"] // valid_data._dataset.item_num, 1)
        floor_s, floor_gflops = decoder_floor(model, users, batch, trainer.device, precision_of(trainer),
                                              backward=False)
        rows.append({"dataset": name, "variant": variant, "users": users, "batch": batch,
                     "floor_s": floor_s, "floor_gflops": floor_gflops,
                     "seconds": {piece: [r[piece] for r in rounds] for piece in (*PIECES, "total")}})
        del model, trainer, train_data, valid_data
    return rows


def markdown(rows):
    header = ["dataset", "precision", "users (per batch)", *PIECES, "total s", "floor s (GFLOP/s)", "x floor"]
    cells = []
    for row in rows:
        s = row["seconds"]
        cells.append([row["dataset"], row["variant"], f"{row['users']:,} ({row['batch']})",
                      *(summary(s[piece]) for piece in PIECES), summary(s["total"]),
                      f"{row['floor_s']:.2f} ({row['floor_gflops']:.0f})",
                      summary([t / row["floor_s"] for t in s["total"]])])
    return pd.DataFrame(cells, columns=header).to_markdown(index=False, disable_numparse=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["ml-20m@0.25"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config would read the options above as config keys
    overrides = {"use_gpu": False} if args.device == "cpu" else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for name in args.datasets:
        rows += profile(name, args.variants, args.reps, overrides)
    print()
    print("seconds per evaluation of every validation user: medians [min, max] over the rounds")
    print(markdown(rows))


if __name__ == "__main__":
    main()
