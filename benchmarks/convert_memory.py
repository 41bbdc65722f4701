"""Peak memory and time of converting an ML-20M-sized ratings.csv.

Writes a synthetic file in ML-20M's raw format (``userId,movieId,rating,timestamp``,
20,000,000 rows by default, 138,493 users x 26,744 movies, >= 20 ratings per user,
half-star ratings drawn from roughly ML-20M's histogram) into a temporary
directory, then converts it in a child process, once with the Mult-VAE
preprocessing (``--multvae``) and once keeping every row, and prints each
child's peak RSS (``wait4`` rusage) and wall time.

    python benchmarks/convert_memory.py            # 20M rows, a few minutes
    python benchmarks/convert_memory.py --rows 2e6 # quicker
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbole_beta.data.convert import DEFAULT_CHUNKSIZE  # noqa: E402
from recbole_beta.data.synthetic import Shape, iter_blocks  # noqa: E402

# ML-20M: 138,493 users, 26,744 movies, 20,000,263 ratings.
ML20M_USERS, ML20M_ITEMS, ML20M_ROWS = 138_493, 26_744, 20_000_263
STARS = np.arange(1, 11) / 2
# Approximate share of each half star (0.5 .. 5.0) among ML-20M's ratings.
STAR_SHARE = np.array([1.2, 3.4, 1.4, 7.2, 4.4, 21.5, 11.0, 27.8, 7.7, 14.4])


def write_ratings_csv(path, rows, seed=0):
    """Write an ML-20M-format ratings.csv of ``rows`` rows; returns seconds taken."""
    started = time.perf_counter()
    scale = rows / ML20M_ROWS
    shape = Shape(n_users=max(1, round(ML20M_USERS * scale)), n_items=ML20M_ITEMS,
                  n_interactions=rows, min_user_inter=20, user_exponent=0.4)
    rng = np.random.default_rng(seed + 1)
    p = STAR_SHARE / STAR_SHARE.sum()
    with open(path, "w", newline="\n") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for user, item, ts in iter_blocks(shape, seed=seed):
            rating = rng.choice(STARS, size=len(user), p=p)
            pd.DataFrame({"u": user, "i": item, "r": rating, "t": ts}).to_csv(
                f, header=False, index=False, lineterminator="\n")
    return time.perf_counter() - started


# The child reports its own high-water mark: rusage from wait4 is no good here, as
# Linux carries the (large) parent's peak RSS into a forked child across exec.
CHILD = """
import sys
from recbole_beta.data_cli import main
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print('VmHWM_kB', hwm.split()[1], flush=True)
sys.exit(code)
"""


def measure(cli_args, env):
    """Run the data CLI with ``cli_args`` in a child; return (exit status, wall s, peak RSS MiB, output)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *cli_args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    peak = next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM_kB")), float("nan"))
    out = "\n    ".join(line for line in lines if not line.startswith("VmHWM_kB"))
    return proc.returncode, wall, peak, out


def main(argv=None):
    """Generate, convert twice, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=float, default=20_000_000, help="rows to generate")
    parser.add_argument("--chunksize", type=int, default=DEFAULT_CHUNKSIZE)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    rows = int(args.rows)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

    tmp = tempfile.mkdtemp(prefix="convert-bench-")
    csv = Path(tmp) / "ratings.csv"
    gen_s = write_ratings_csv(csv, rows)
    size_mb = csv.stat().st_size / 2**20
    print(f"generated {rows:,} rows, {size_mb:,.0f} MiB, in {gen_s:.1f} s: {csv}")

    _, _, base_mb, _ = measure([], env)
    print(f"baseline (python + numpy + pandas + recbole_beta.data imported): {base_mb:.0f} MiB")
    runs = [("Mult-VAE preprocessing (--multvae)", ["--multvae"]), ("no filtering", [])]
    for label, extra in runs:
        cmd = ["convert", str(csv), "--format",
               "ml-20m", "--out", str(Path(tmp) / "out"), "--name", "bench",
               "--chunksize", str(args.chunksize), *extra]
        code, wall, peak, out = measure(cmd, env)
        print(f"{label}: exit {code}, {wall:.1f} s, peak RSS {peak:,.0f} MiB")
        print(f"    {out}")
    if args.keep:
        print(f"kept {tmp}")
    else:
        for path in sorted(Path(tmp).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
