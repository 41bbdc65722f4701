"""Where a training step's output layer spends its time: its matrix products against the rest.

    python benchmarks/train_step_profile.py                   # ML-20M's shape: 2,048 users x 20,108 items
    python benchmarks/train_step_profile.py --reps 20 --batch 500

The sparse path's output layer and likelihood (``recbole_beta.model.sparse.linear_multinomial_nll``)
are most of a training step at the ML-20M shape. This script runs that layer's forward and backward
on a synthetic batch (every user with ``--per-user`` items), float32 and under autocast (bfloat16 on
the CPU), in rounds that alternate the two. One more round runs under torch's profiler, which splits
a step's time into:

- **products**: the three matrix products (``aten::mm`` and ``aten::addmm``);
- **float32 passes**: everything else. This is the softmax, the likelihood and the logits' gradient
  over the batch x items logits, which the enable_amp contract keeps in float32. It also counts the
  casts to and from the products' dtype.

These sit beside **bare products**: the same three products alone, at the precision of the run,
timed in one call each and in the layer's own column blocks (``sparse_cpu_column_block``).
``epoch_time.py``'s floor takes the one-call figure.

**float32 passes / products** is taken within the profiled round, against the products as they
run in the step, the fastest products the step reaches. The step takes at least ``1 +`` that ratio
times its own products, for as long as the softmax stays a float32 pass of its own. So does an
epoch, which also runs the encoder, the optimizer and the batches. The last column is the
(unprofiled) step over the one-call products, which is what ``epoch_time.py``'s floor would say.
That ratio moves with how fast one call happens to run: on a shared machine one call has run at
anywhere from 1x to 3x the speed of blocks.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from topk_designs import per_call_ms  # noqa: E402

from recbole_beta.data.user_items import SparseBatch  # noqa: E402
from recbole_beta.model.sparse import Workspace, linear_multinomial_nll  # noqa: E402
from recbole_beta.precision import autocast_dtype  # noqa: E402

PRODUCTS = ("aten::mm", "aten::addmm")


def synthetic_batch(users, items, per_user, generator):
    """``per_user`` distinct-enough random items for each of ``users`` rows, value 1."""
    rows = torch.arange(users).repeat_interleave(per_user)
    cols = torch.randint(0, items, (len(rows),), generator=generator)
    crow = torch.arange(0, len(rows) + 1, per_user)
    return SparseBatch(crow, rows, cols, torch.ones(len(rows)), items)


class Step:
    """One training step of the output layer: forward, loss, backward, as the model's step runs it."""

    def __init__(self, args, low):
        generator = torch.Generator().manual_seed(0)
        self.linear = torch.nn.Linear(args.hidden, args.items)
        self.h = torch.randn(args.batch, args.hidden, generator=generator)
        self.batch = synthetic_batch(args.batch, args.items, args.per_user, generator)
        self.workspace = Workspace()
        self.block = args.block
        self.low = low  # autocast's dtype, or None: float32

    def __call__(self):
        # a leaf of its own each step (the hidden layer's dtype under autocast), its gradient dropped
        h = (self.h if self.low is None else self.h.to(self.low)).detach().requires_grad_()
        with torch.autocast("cpu", dtype=self.low or torch.bfloat16, enabled=self.low is not None):
            loss = linear_multinomial_nll(self.linear, h, self.batch, self.workspace, self.block).mean()
        loss.backward()
        self.linear.weight.grad = self.linear.bias.grad = None


def bare_products(args, dtype, reps):
    """Milliseconds of the layer's three products alone in ``dtype``: (one call each, in column blocks)."""
    b, hid, n, blk = args.batch, args.hidden, args.items, args.block
    h, w, g = torch.randn(b, hid, dtype=dtype), torch.randn(n, hid, dtype=dtype), torch.randn(b, n, dtype=dtype)
    h_t = h.t().contiguous()

    def whole():
        torch.mm(h, w.t()), torch.mm(g, w), torch.mm(g.t(), h)

    def blocks():
        for start in range(0, n, blk):
            part = slice(start, start + blk)
            torch.mm(h, w[part].t()), torch.mm(g[:, part], w[part]), torch.mm(h_t, g[:, part])

    return per_call_ms(whole, reps), per_call_ms(blocks, reps)


def split_ms(step, steps):
    """(products, the rest) milliseconds per step under torch's profiler (CPU ops, self time)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    products = rest = 0.0
    for event in prof.key_averages():
        if event.key.startswith("aten::"):  # operators; Python-level and autograd wrappers hold no work
            if event.key in PRODUCTS:
                products += event.self_cpu_time_total
            else:
                rest += event.self_cpu_time_total
    return products / 1e3 / steps, rest / 1e3 / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2048, help="users per step (RecBole's train_batch_size)")
    parser.add_argument("--items", type=int, default=20108)
    parser.add_argument("--hidden", type=int, default=600)
    parser.add_argument("--per-user", type=int, default=73, help="items per user (ML-20M: ~10M / 136,677)")
    parser.add_argument("--block", type=int, default=1024, help="sparse_cpu_column_block")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    precisions = {"float32": None, str(autocast_dtype(torch.device("cpu"))).removeprefix("torch."):
                  autocast_dtype(torch.device("cpu"))}
    steps = {name: Step(args, low) for name, low in precisions.items()}
    for step in steps.values():
        step()  # warm-up: allocator, threads
    wall = {name: [] for name in steps}
    for _ in range(args.reps):  # interleaved: A B A B ...
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            wall[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; a step of {args.batch:,} users x "
          f"{args.items:,} items, hidden {args.hidden}, column blocks of {args.block}; medians of {args.reps}")
    rows = []
    for name, step in steps.items():
        products, rest = split_ms(step, max(3, args.reps // 3))
        whole, blocks = bare_products(args, precisions[name] or torch.float32, max(3, args.reps // 3))
        step_ms = 1e3 * statistics.median(wall[name])
        rows.append([name, f"{step_ms:.0f}", f"{products:.0f}", f"{rest:.0f}", f"{whole:.0f}", f"{blocks:.0f}",
                     f"{rest / products:.2f}", f"{step_ms / whole:.2f}"])
    header = ["precision", "step ms", "products in the step ms", "float32 passes and casts ms",
              "bare products ms (one call)", "bare products ms (blocks)", "float32 passes / products",
              "step / one-call products"]
    print(pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True))


if __name__ == "__main__":
    main()
