"""Synthetic implicit-feedback data in RecBole's atomic format, for scale tests and benchmarks.

Item popularity and user activity follow power laws over ranks (Zipf-like):
item of popularity rank r is drawn with weight ``r ** -item_exponent``; the user of
activity rank r gets a share ``r ** -user_exponent`` of the interactions above the
per-user minimum. Ranks are assigned to ids by a random permutation, so ids carry
no order. Each user's items are a weighted sample *without replacement* (no
duplicate user-item pairs), drawn for a block of users at once with numpy.

Everything comes from one ``numpy.random.Generator(seed)`` used in a fixed
order, so the same arguments give the same file bytes.
"""

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_beta.data.convert import atomic_header, format_summary
from recbole_beta.errors import RecBoleBetaError
from recbole_beta.files import AtomicFiles, write_json

# Users sampling more than this fraction of the catalogue take the exact per-user path.
_HEAVY_FRACTION = 0.1
_TIME_START = 946_684_800  # 2000-01-01, for plausible unix timestamps
_TIME_SPAN = 15 * 365 * 86_400
# The smallest weight a rank may get: far below it, the exact sampler's keys (a draw over the weight)
# overflow float64 and the activity shares divide by zero.
_MIN_WEIGHT = 1e-300


class SyntheticDataError(RecBoleBetaError, ValueError):
    """The requested shape is impossible (e.g. more interactions than user-item pairs)."""


@dataclass(frozen=True)
class Shape:
    """What to generate. Give ``n_interactions`` or ``density`` (interactions / (users * items))."""

    n_users: int
    n_items: int
    n_interactions: int = None
    density: float = None
    item_exponent: float = 1.0
    user_exponent: float = 0.4
    min_user_inter: int = 5
    timestamps: bool = True

    def total(self):
        """Number of interactions, from ``n_interactions`` or ``density``."""
        if self.n_interactions is not None:
            return int(self.n_interactions)
        if self.density is None:
            raise SyntheticDataError("give either the number of interactions or the density")
        return int(round(self.density * self.n_users * self.n_items))

    def validate(self):
        """Raise SyntheticDataError unless this shape can be generated."""
        if self.n_users < 1 or self.n_items < 1:
            raise SyntheticDataError(f"need at least one user and one item, got "
                                     f"{self.n_users} users, {self.n_items} items")
        if self.n_interactions is not None and self.density is not None:
            raise SyntheticDataError("give the number of interactions or the density, not both")
        if self.density is not None and not (math.isfinite(self.density) and 0 < self.density <= 1):
            raise SyntheticDataError(f"density={self.density} must be a number in (0, 1]: the share of all "
                                     "user-item pairs that interact")
        self._check_exponents()
        total = self.total()
        if not 1 <= self.min_user_inter <= self.n_items:
            raise SyntheticDataError(f"min_user_inter={self.min_user_inter} must be between 1 "
                                     f"and the number of items ({self.n_items})")
        low, high = self.n_users * self.min_user_inter, self.n_users * self.n_items
        if not low <= total <= high:
            raise SyntheticDataError(
                f"{total:,} interactions do not fit {self.n_users:,} users x {self.n_items:,} items "
                f"with at least {self.min_user_inter} per user: need {low:,} to {high:,}")
        return total

    def _check_exponents(self):
        """Raise unless both exponents are finite, >= 0, and leave the last rank a usable weight."""
        for key, n, what in (("item_exponent", self.n_items, "items"), ("user_exponent", self.n_users, "users")):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise SyntheticDataError(f"{key}={value} must be a finite number >= 0 (0 is uniform)")
            if float(n) ** -float(value) < _MIN_WEIGHT:
                raise SyntheticDataError(f"{key}={value:g} is too steep for {n:,} {what}: the last rank's weight "
                                         f"{n} ** -{value:g} is below {_MIN_WEIGHT:g} (float64's range)")


PRESETS = {
    # MovieLens-1M: 6,040 users, 3,706 rated items, 1,000,209 ratings, >= 20 per user.
    "ml-1m": Shape(n_users=6040, n_items=3706, n_interactions=1_000_209, min_user_inter=20),
    # ML-20M after the Mult-VAE preprocessing (Liang et al. 2018): 136,677 users,
    # 20,108 items, about 10.0M interactions, >= 5 per user.
    "ml-20m": Shape(n_users=136_677, n_items=20_108, n_interactions=10_000_000, min_user_inter=5),
}


def allocate_activity(n_users, total, n_items, exponent, minimum):
    """Interactions per user, by activity rank (descending), summing exactly to ``total``.

    Each user gets ``minimum`` plus a share of the rest proportional to
    ``rank ** -exponent``, capped at ``n_items``; what a capped user cannot take is
    shared again among the others.
    """
    weights = np.arange(1, n_users + 1, dtype=np.float64) ** -float(exponent)
    counts = np.full(n_users, minimum, dtype=np.int64)
    remaining = total - int(counts.sum())
    open_ = counts < n_items
    while remaining > 0:
        w = np.where(open_, weights, 0.0)
        share = remaining * w / w.sum()
        add = np.floor(share).astype(np.int64)
        left = remaining - int(add.sum())
        if left:
            # Largest remainders first; stable so ties go to the more active rank.
            add[np.argsort(-(share - add), kind="stable")[:left]] += 1
        counts += add
        over = counts > n_items
        remaining = int((counts[over] - n_items).sum())
        counts[over] = n_items
        open_ &= counts < n_items
    return counts


def _sample_light(rng, cdf, counts, n_items, weights):
    """Weighted samples without replacement for many users at once; ``(owner, item_rank)``.

    Draws with replacement and keeps each user's first ``k`` distinct items, which is
    exactly sequential sampling without replacement. Users whose draws held too
    few distinct items are drawn again, with more draws; once that would be more draws than
    items, by :func:`_sample_heavy` instead (the same law, for one catalogue's cost per user).
    """
    owners, ranks = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    todo = np.arange(len(counts))
    factor = 1.5
    while len(todo):
        k = counts[todo]
        m = np.ceil(k * factor).astype(np.int64) + 8
        # a steep exponent: the doubling went on for ever (a normal one is done rounds before, its
        # output unchanged)
        exact = k * factor > n_items
        for i in np.flatnonzero(exact):
            owners.append(np.full(k[i], todo[i]))
            ranks.append(_sample_heavy(rng, weights, int(k[i])))
        todo, k, m = todo[~exact], k[~exact], m[~exact]
        if not len(todo):
            break
        local = np.repeat(np.arange(len(todo)), m)
        draws = np.searchsorted(cdf, rng.random(local.size) * cdf[-1], side="right")
        np.minimum(draws, n_items - 1, out=draws)
        # First occurrence of each (user, item), in draw order (np.unique's index sort is stable).
        _, first = np.unique(local * n_items + draws, return_index=True)
        first.sort()
        own, itm = local[first], draws[first]
        position = np.arange(len(own)) - np.searchsorted(own, np.arange(len(todo)))[own]
        got = np.bincount(own, minlength=len(todo))
        done = got >= k
        keep = done[own] & (position < k[own])
        owners.append(todo[own[keep]])
        ranks.append(itm[keep])
        todo = todo[~done]
        factor *= 2
    return np.concatenate(owners), np.concatenate(ranks)


def _sample_heavy(rng, weights, k):
    """``k`` distinct item ranks for one user, by exponential races (exact weighted sampling)."""
    keys = rng.exponential(size=len(weights)) / weights
    return np.argpartition(keys, k - 1)[:k] if k < len(weights) else np.arange(len(weights))


def iter_blocks(shape, seed=0, block_interactions=1_000_000):
    """Yield ``(user, item, timestamp)`` int64 arrays, user-ordered, in blocks of about ``block_interactions``.

    User ids are 1..n_users and item ids 1..n_items; ``timestamp`` is None if
    ``shape.timestamps`` is false.
    """
    total = shape.validate()
    rng = np.random.default_rng(seed)
    item_weights = np.arange(1, shape.n_items + 1, dtype=np.float64) ** -float(shape.item_exponent)
    cdf = np.cumsum(item_weights)
    item_of_rank = rng.permutation(shape.n_items) + 1
    counts = allocate_activity(shape.n_users, total, shape.n_items, shape.user_exponent,
                               shape.min_user_inter)
    counts = counts[rng.permutation(shape.n_users)]  # counts[u] is user u+1's activity
    heavy_limit = max(1, int(shape.n_items * _HEAVY_FRACTION))
    bounds = np.searchsorted(np.cumsum(counts), np.arange(block_interactions, total,
                                                          block_interactions), side="right")
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, shape.n_users]):
        if start == stop:
            continue
        k = counts[start:stop]
        heavy = k > heavy_limit
        light = np.flatnonzero(~heavy)
        owner, rank = _sample_light(rng, cdf, k[light], shape.n_items, item_weights)
        owner = light[owner]
        extra = [(np.full(k[i], i), _sample_heavy(rng, item_weights, int(k[i])))
                 for i in np.flatnonzero(heavy)]
        if extra:
            owner = np.concatenate([owner] + [e[0] for e in extra])
            rank = np.concatenate([rank] + [e[1] for e in extra])
        user = owner.astype(np.int64) + start + 1
        item = item_of_rank[rank].astype(np.int64)
        if shape.timestamps:
            ts = rng.integers(_TIME_START, _TIME_START + _TIME_SPAN, size=len(user))
            order = np.lexsort((item, ts, user))
            yield user[order], item[order], ts[order]
        else:
            order = np.lexsort((item, user))
            yield user[order], item[order], None


def generate(out_dir, name, shape, seed=0, block_interactions=1_000_000, log=None):
    """Write ``<out_dir>/<name>/<name>.inter`` and ``<name>.summary.json``; return the summary.

    The files appear only when complete (temporary names, then ``os.replace``).
    """
    started = time.perf_counter()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticDataError(f"seed={seed!r} must be an integer >= 0")
    total = shape.validate()
    if not name or "/" in name or name in (".", ".."):
        raise SyntheticDataError(f"bad dataset name {name!r}")
    target = Path(out_dir) / name
    columns = ["user", "item"] + (["timestamp"] if shape.timestamps else [])
    item_counts = np.zeros(shape.n_items + 1, dtype=np.int64)
    user_counts = np.zeros(shape.n_users + 1, dtype=np.int64)
    with AtomicFiles(target) as out:
        with out.open(f"{name}.inter") as f:
            f.write(atomic_header(columns))
            for user, item, ts in iter_blocks(shape, seed, block_interactions):
                item_counts += np.bincount(item, minlength=shape.n_items + 1)
                user_counts += np.bincount(user, minlength=shape.n_users + 1)
                frame = {"user": user, "item": item}
                if ts is not None:
                    frame["timestamp"] = ts
                pd.DataFrame(frame).to_csv(f, sep="\t", header=False, index=False,
                                           lineterminator="\n")
        summary = _summary(name, shape, seed, total, user_counts[1:], item_counts[1:], target)
        with out.open(f"{name}.summary.json") as f:
            write_json(f, summary, indent=2, end="\n")
    if log:
        log(format_summary(summary) + f" ({time.perf_counter() - started:.1f} s)")
    return summary


def _summary(name, shape, seed, total, user_counts, item_counts, target):
    """Summary dict: realised counts, density and skew figures (no timings, so it is reproducible)."""
    n_users = int(np.count_nonzero(user_counts))
    n_items = int(np.count_nonzero(item_counts))
    top = np.sort(item_counts)[::-1][: max(1, int(np.ceil(0.1 * shape.n_items)))]
    return {
        "dataset": name,
        "users": n_users,
        "items": n_items,
        "interactions": int(total),
        "density": total / (n_users * n_items),
        "top10pct_items_share": round(float(top.sum() / total), 4),
        "user_interactions": {"min": int(user_counts.min()), "median": float(np.median(user_counts)),
                              "max": int(user_counts.max())},
        "seed": seed,
        "shape": asdict(replace(shape, n_interactions=total, density=None)),
        "generator": "recbole_beta.data.synthetic",
        "columns": [atomic_header([c]).strip() for c in
                    ["user", "item"] + (["timestamp"] if shape.timestamps else [])],
        "inter_file": str(target / f"{name}.inter"),
    }
