"""Top-k designs for one full-ranking batch, measured side by side (milliseconds per batch).

    python benchmarks/topk_designs.py                      # ML-20M's batch: 208 users, 20,108 items, k = 100
    python benchmarks/topk_designs.py --users 208 --items 20108 --k 100 --reps 30

Before the threshold scan (recbole_beta/topk.py), the evaluation profile (eval_profile.py) put the
collector's top-k at 9-10 s of a 41 s float32 evaluation at the ML-20M shape. This script
measures the designs tried for it, so the figures in docs/benchmarks.md ("Top-k designs
measured") can be rerun:

- ``torch.topk`` on row-major scores, and on the item-major view the plugin's sparse path writes;
- the collector's top-k (``recbole_beta.collector.topk_indices``): row-major, the blocked top-k
  (RecBole's baselines' scores); item-major, the plugin's threshold from torch and one numba scan
  in the calling thread (``recbole_beta.topk``);
- one read of the scores (``torch.sum``): no design that looks at every score goes below it;
- a two-pass numba kernel (strided block maxima, each user's k-th highest maximum as a threshold,
  one scan keeping the scores at or above it, a sort of those few), users split over Python threads
  without the GIL; timed alone, and right after the product that writes the scores, as it would
  run in an evaluation (torch's and MKL's worker threads are then still awake);
- the product and selection fused: the output layer computed in chunks of items and each chunk's
  scores pushed into per-user heaps while in cache, timed whole, against the product alone plus
  a selection after it.

The rows of the alternatives need numba (a dependency of the plugin since the threshold scan);
without it they are skipped, and the script says so. Scores are a popularity term plus per-user noise (``--shape
popular``, the shape a trained model's scores roughly have: the same items lead for most users) or
independent normal draws (``--shape iid``, the worst case for a threshold scan), items in random id
order. Every design's values are checked against torch.topk's before it is timed.
"""

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recbole_beta.collector import topk_indices  # noqa: E402


def per_call_ms(call, reps, before=None):
    """Median milliseconds of ``call()``; ``before()`` runs untimed ahead of each call."""
    call()
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def numba_designs():
    """The numba kernels (None without numba)."""
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(nogil=True)
    def two_pass(scores, bits, lo, hi, k, m, cap, out):
        # scores: float32 (items x users), C-contiguous; bits: the same as int32; users lo..hi
        n = scores.shape[0]
        block, width = n // m, hi - lo
        running = np.empty(width, dtype=scores.dtype)
        maxima = np.empty((width, m), dtype=scores.dtype)
        for j in range(m):  # pass 1: the maxima of the strided blocks j, j + m, j + 2m, ...
            running[:] = scores[j, lo:hi]
            for r in range(1, block):
                row = scores[j + r * m, lo:hi]
                for u in range(width):
                    running[u] = max(running[u], row[u])
            maxima[:, j] = running
        threshold = np.empty(width, dtype=scores.dtype)
        for u in range(width):
            threshold[u] = np.partition(maxima[u], m - k)[m - k]
        listed = np.empty(width + 1, dtype=np.int64)
        kept = np.empty((width, cap), dtype=np.int64)
        count = np.zeros(width, dtype=np.int64)
        for i in range(n):  # pass 2: keep (order key, item) of the scores at or above the threshold
            row = scores[i, lo:hi]
            hits = 0
            for u in range(width):
                hits += row[u] >= threshold[u]
            if hits:
                hits = 0
                for u in range(width):
                    listed[hits] = u
                    hits += row[u] >= threshold[u]
                for h in range(hits):
                    u = listed[h]
                    b = np.int64(bits[i, lo + u])
                    if count[u] < cap:
                        kept[u, count[u]] = ((b ^ ((b >> 31) & 0x7FFFFFFF)) << 32) | (0xFFFFFFFF - i)
                    count[u] += 1
        for u in range(width):
            c = min(count[u], cap)
            best = np.sort(kept[u, :c])
            for t in range(k):
                out[lo + u, t] = 0xFFFFFFFF - (best[c - 1 - t] & 0xFFFFFFFF)

    @njit(nogil=True)
    def absorb(chunk, first_item, heap_values, heap_items, size, threshold):
        # push each score above its user's k-th best so far into the user's min-heap of k
        k = heap_values.shape[1]
        for i in range(chunk.shape[0]):
            row = chunk[i]
            hits = 0
            for u in range(row.shape[0]):
                hits += row[u] > threshold[u]
            if hits == 0:
                continue
            for u in range(row.shape[0]):
                if row[u] <= threshold[u]:
                    continue
                values, items = heap_values[u], heap_items[u]
                if size[u] < k:  # fill: sift up
                    p = size[u]
                    values[p], items[p] = row[u], first_item + i
                    size[u] += 1
                    while p > 0 and values[p] < values[(p - 1) // 2]:
                        q = (p - 1) // 2
                        values[p], values[q] = values[q], values[p]
                        items[p], items[q] = items[q], items[p]
                        p = q
                    if size[u] == k:
                        threshold[u] = values[0]
                    continue
                values[0], items[0] = row[u], first_item + i  # replace the smallest: sift down
                p = 0
                while 2 * p + 1 < k:
                    c = 2 * p + 1
                    if c + 1 < k and values[c + 1] < values[c]:
                        c += 1
                    if values[c] >= values[p]:
                        break
                    values[p], values[c] = values[c], values[p]
                    items[p], items[c] = items[c], items[p]
                    p = c
                threshold[u] = values[0]

    return two_pass, absorb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=208)
    parser.add_argument("--items", type=int, default=20108)
    parser.add_argument("--hidden", type=int, default=600, help="the decoder's last hidden width (fused rows)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--shape", choices=("popular", "iid"), default="popular")
    args = parser.parse_args(argv)
    users, n, k = args.users, args.items, args.k
    torch.manual_seed(0)
    item_effect = torch.randn(n) * (2.0 if args.shape == "popular" else 0.0)
    weight = torch.randn(n, args.hidden) * 0.05
    hidden = torch.randn(users, args.hidden)
    by_item = torch.empty(n, users)  # item-major, as the sparse path writes it

    def product(out=by_item):
        return torch.addmm(item_effect.unsqueeze(1), weight, hidden.t(), out=out)

    product()
    item_major = by_item.t()
    row_major = item_major.contiguous()
    best = torch.topk(row_major, k, dim=1)[0]
    rows = []

    def row(name, call, reps=args.reps, before=None):
        assert torch.equal(row_major.gather(1, call()), best), name
        rows.append((name, per_call_ms(call, reps, before)))

    row("torch.topk, row-major", lambda: torch.topk(row_major, k, dim=1)[1])
    row("torch.topk, item-major view", lambda: torch.topk(item_major, k, dim=1)[1])
    row("collector, row-major (blocked)", lambda: topk_indices(row_major, k))
    row("collector, item-major (threshold + numba scan)", lambda: topk_indices(item_major, k))
    rows.append(("one read of the scores (torch.sum)", per_call_ms(lambda: by_item.sum(), args.reps)))
    kernels = numba_designs()
    if kernels is None:
        print("numba is not installed: the alternatives' rows are skipped (pip install numba)")
    else:
        two_pass, absorb = kernels
        values, bits = by_item.numpy(), by_item.numpy().view(np.int32)
        threads = ThreadPoolExecutor(torch.get_num_threads())
        m, cap = 3 * k, min(n, 8 * k)

        def numba_two_pass(parts):
            out = np.empty((users, k), dtype=np.int64)
            bounds = [users * p // parts for p in range(parts + 1)]
            jobs = [threads.submit(two_pass, values, bits, lo, hi, k, m, cap, out)
                    for lo, hi in zip(bounds, bounds[1:])]
            for job in jobs:
                job.result()
            return torch.from_numpy(out)

        parts = torch.get_num_threads()
        row("numba two-pass, item-major, 1 thread", lambda: numba_two_pass(1))
        row(f"numba two-pass, item-major, {parts} threads", lambda: numba_two_pass(parts))

        def fused(chunk=2048):
            heap_values = np.empty((users, k), dtype=np.float32)
            heap_items = np.empty((users, k), dtype=np.int64)
            size = np.zeros(users, dtype=np.int64)
            threshold = np.full(users, -np.inf, dtype=np.float32)
            buffer = torch.empty(chunk, users)
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                out = buffer[: stop - start]
                torch.addmm(item_effect[start:stop].unsqueeze(1), weight[start:stop], hidden.t(), out=out)
                absorb(out.numpy(), start, heap_values, heap_items, size, threshold)
            order = np.argsort(-heap_values, axis=1, kind="stable")
            return torch.from_numpy(np.take_along_axis(heap_items, order, axis=1))

        rows.append(("product alone (addmm, item-major)", per_call_ms(product, args.reps)))
        # the selection alone, timed right after an untimed product: the product's own noise left out
        row("after the product: torch.topk, item-major view", lambda: torch.topk(item_major, k, dim=1)[1],
            before=product)
        row("after the product: collector (threshold + numba scan)", lambda: topk_indices(item_major, k),
            before=product)
        row("after the product: numba two-pass, 1 thread", lambda: numba_two_pass(1), before=product)
        row(f"after the product: numba two-pass, {parts} threads", lambda: numba_two_pass(parts), before=product)
        row("product and heaps fused (chunks of 2,048 items), whole", fused)
    print(f"{users} users x {n} items, k = {k}, {args.shape} scores, {torch.get_num_threads()} threads, "
          f"median of {args.reps}")
    width = max(len(name) for name, _ in rows)
    for name, ms in rows:
        print(f"{name:<{width}}  {ms:8.2f} ms")


if __name__ == "__main__":
    main()
