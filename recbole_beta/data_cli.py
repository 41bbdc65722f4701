"""Command line of the data tools: ``python -m recbole_beta data {convert,synthetic,export} ...``.

It stands with the other command lines, above everything it calls (``export`` builds a Config); the data package
below holds the tools, and ``data/__main__.py`` only launches this module.

Bad input ends with one ``recbole-beta: ...`` line on stderr and exit status 2, no traceback.
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from recbole_beta.data.convert import (
    DEFAULT_CHUNKSIZE,
    FORMATS,
    MULTVAE_FILTERS,
    ConversionError,
    Filters,
    convert,
    generic_layout,
)
from recbole_beta.data.synthetic import PRESETS, Shape, SyntheticDataError, generate
from recbole_beta.data.vae_cf import import_vae_cf
from recbole_beta.errors import RecBoleBetaError, fail

_SEP_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "space": " ", "pipe": "|"}

CONVERT_EPILOG = """\
examples:
  # ML-20M with the Mult-VAE preprocessing (ratings >= 4, i.e. the paper's > 3.5; users with >= 5)
  python -m recbole_beta data convert ~/Downloads/ml-20m/ratings.csv --multvae --out dataset/
  # ML-1M, explicit threshold and a 10-core (users and items, repeated until stable)
  python -m recbole_beta data convert ml-1m/ratings.dat --min-rating 3.5 \\
      --min-user-inter 10 --min-item-inter 10 --k-core --name ml-1m-10core
  # any CSV/TSV: name the columns
  python -m recbole_beta data convert clicks.tsv --format csv --sep tab \\
      --user-col uid --item-col sku --time-col ts --name clicks

The output is <out>/<name>/<name>.inter (RecBole atomic file) and <name>.summary.json;
use it with RecBole's --data_path=<out> --dataset=<name>.
"""

SYNTHETIC_EPILOG = """\
examples:
  python -m recbole_beta data synthetic --preset ml-20m --seed 0 --out dataset/
  python -m recbole_beta data synthetic --users 5000 --items 2000 --density 0.01 --name toy
"""


def _separator(text):
    """--sep value: a name (tab, comma, ...), an escape (\\t) or the literal separator."""
    sep = _SEP_NAMES.get(text.lower(), text)
    if not sep:
        raise argparse.ArgumentTypeError("the separator must not be empty")
    return sep


def _positive_int(text):
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text):
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _int(text):
    """argparse type: an integer; accepts 10_000_000 and 1e7."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(value)


def build_parser():
    """The argparse parser with the convert, synthetic and export sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_beta data",
        description="Make RecBole atomic .inter files: convert raw MovieLens/CSV ratings, "
                    "or generate power-law synthetic data for scale tests.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,synthetic,export}")
    _add_convert(sub)
    _add_synthetic(sub)
    _add_export(sub)
    return parser


def _add_convert(sub):
    """The ``convert`` sub-command: the input, its format and the output; a generic CSV's columns; the
    Mult-VAE preprocessing's filters."""
    c = sub.add_parser(
        "convert", help="raw ratings (MovieLens or any CSV/TSV) -> RecBole atomic .inter",
        description="Convert a raw interaction file into <out>/<name>/<name>.inter, "
                    "optionally with the Mult-VAE preprocessing, reading it in chunks.",
        epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("input", help="the raw file (u.data, ratings.dat, ratings.csv, any CSV/TSV) "
                                 "or an extracted MovieLens directory")
    c.add_argument("--format", "-f", default="auto",
                   choices=["auto", *FORMATS, "csv", "vae_cf"],
                   help="input format; auto (default) tells MovieLens files by name: u.data, "
                        "ratings.dat, ratings.csv. csv = generic delimited file, see below. "
                        "vae_cf = the folder the Mult-VAE reference code's preprocessing writes "
                        "(train.csv, validation_tr/te.csv, test_tr/te.csv, unique_sid.txt): its split is "
                        "kept, for --eval_protocol=strong")
    c.add_argument("--out", "-o", default="dataset",
                   help="output root, RecBole's data_path (default: dataset)")
    c.add_argument("--name", "-n",
                   help="dataset name (default: the format, e.g. ml-20m, or the file's stem "
                        "for csv; ml-100k-converted for ml-100k, since RecBole always uses its "
                        "bundled copy for the name ml-100k)")
    _add_csv_options(c.add_argument_group("generic CSV/TSV (--format csv)"))
    _add_filter_options(c.add_argument_group("filtering (Mult-VAE preprocessing, Liang et al. 2018)"))
    c.add_argument("--chunksize", type=_positive_int, default=DEFAULT_CHUNKSIZE,
                   help=f"rows read at a time (default: {DEFAULT_CHUNKSIZE:,})")
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")


def _add_csv_options(g):
    """``convert``'s options for a generic delimited file (``--format csv``)."""
    g.add_argument("--sep", type=_separator, default=None,
                   help="field separator: a character or string, or tab/comma/semicolon/space/pipe "
                        "(default: comma)")
    g.add_argument("--user-col", default=None,
                   help="user column name (default: user_id; 0 with --no-header)")
    g.add_argument("--item-col", default=None,
                   help="item column name (default: item_id; 1 with --no-header)")
    g.add_argument("--rating-col", default=None, help="rating column name (optional)")
    g.add_argument("--time-col", default=None, help="timestamp column name (optional)")
    g.add_argument("--no-header", action="store_true",
                   help="the file has no header line; the --*-col options are then 0-based positions")


def _add_filter_options(f):
    """``convert``'s filters: the Mult-VAE preprocessing (Liang et al. 2018) and its parts."""
    f.add_argument("--min-rating", type=float, default=None,
                   help="keep only interactions with rating >= this (implicit feedback)")
    f.add_argument("--min-user-inter", type=_non_negative_int, default=None,
                   help="drop users with fewer interactions than this")
    f.add_argument("--min-item-inter", type=_non_negative_int, default=None,
                   help="drop items with fewer interactions than this (applied before users)")
    f.add_argument("--k-core", action="store_true",
                   help="repeat the item and user filters until nothing changes")
    f.add_argument("--multvae", action="store_true",
                   help="the paper's ML-20M setup: --min-rating 4 (the reference code's "
                        "rating > 3.5 on half stars) --min-user-inter 5, one pass; "
                        "explicit options override its values")


def _add_synthetic(sub):
    """The ``synthetic`` sub-command: a preset or the shape, the power laws, the output."""
    s = sub.add_parser(
        "synthetic", help="generate power-law synthetic atomic data",
        description="Generate <out>/<name>/<name>.inter with Zipf-like item popularity and "
                    "user activity, no duplicate user-item pairs, reproducible from --seed.",
        epilog=SYNTHETIC_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--preset", choices=sorted(PRESETS),
                   help="ml-1m: 6,040 users x 3,706 items x 1,000,209; ml-20m: 136,677 x 20,108 "
                        "x 10,000,000 (ML-20M after the Mult-VAE preprocessing)")
    s.add_argument("--users", type=_positive_int, help="number of users")
    s.add_argument("--items", type=_positive_int, help="number of items")
    s.add_argument("--interactions", type=_positive_int, help="number of interactions")
    s.add_argument("--density", type=float, help="interactions / (users x items), instead of "
                                                 "--interactions")
    s.add_argument("--item-exponent", type=float,
                   help="Zipf exponent of item popularity (default 1.0; 0 = uniform)")
    s.add_argument("--user-exponent", type=float,
                   help="power-law exponent of user activity (default 0.4; 0 = equal)")
    s.add_argument("--min-user-inter", type=_positive_int,
                   help="interactions every user has at least (default 5; ml-1m preset 20)")
    s.add_argument("--no-timestamp", action="store_true", help="write no timestamp column")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--out", "-o", default="dataset", help="output root (default: dataset)")
    s.add_argument("--name", "-n", help="dataset name (default: <preset>-synthetic or synthetic)")
    s.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")


def _add_export(sub):
    """The ``export`` sub-command: a dataset's eval_protocol=strong split in the vae_cf layout."""
    e = sub.add_parser(
        "export", help="write an eval_protocol=strong split in the reference code's vae_cf layout",
        description="Split a dataset as `run_recbole_beta.py --eval_protocol=strong` does and write "
                    "the split as the Mult-VAE reference code's preprocessing would: train.csv, "
                    "validation_tr.csv, validation_te.csv, test_tr.csv, test_te.csv (uid,sid) and "
                    "unique_sid.txt, so other tools evaluate on exactly the same users and targets. "
                    "Any --key=value sets a config key (heldout_users, heldout_ratio, split_seed, "
                    "data_path, val_interval, ...), as for run_recbole_beta.py.",
        epilog="example:\n  python -m recbole_beta data export --dataset ml-100k --heldout_users=69 "
               "--out vae_cf/ml-100k\n", formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--dataset", "-d", default="ml-100k", help="dataset name (default: ml-100k)")
    e.add_argument("--config_files", default=None, help="YAML config files, separated by spaces")
    e.add_argument("--out", "-o", required=True, help="the folder to write")


def _config_overrides(extra):
    """``--key=value`` arguments as a config dict (RecBole's Config converts the values)."""
    from recbole_beta.config import split_key_values

    pairs, others = split_key_values(extra)
    if others:
        raise ConversionError(f"unrecognised argument {others[0]!r}: config keys are given as --key=value")
    return dict(pairs)


def run_export(args, extra):
    """The export sub-command: a strong-protocol split written in the vae_cf layout."""
    from recbole_beta.config import Config  # RecBole's machinery only for this sub-command
    from recbole_beta.data.heldout import HeldOutDataset
    from recbole_beta.data.vae_cf import export_vae_cf

    config_dict = {**_config_overrides(extra), "eval_protocol": "strong", "state": "WARNING"}
    files = args.config_files.split() if args.config_files else None
    config = Config(model="Pop", dataset=args.dataset, config_file_list=files, config_dict=config_dict,
                    argv=[])
    dataset = HeldOutDataset(config)
    dataset.build()
    out = export_vae_cf(dataset, args.out)
    groups = dataset.protocol_users
    print(f"{args.dataset}: {len(groups['train'])} training, {len(groups['valid'])} validation, "
          f"{len(groups['test'])} test users, {dataset.item_num - 1} items -> {out}/")


def _filters(args):
    """Filters from --multvae and the explicit options (explicit ones win)."""
    base = MULTVAE_FILTERS if args.multvae else Filters()
    explicit = {k: getattr(args, k) for k in ("min_rating", "min_user_inter", "min_item_inter")
                if getattr(args, k) is not None}
    return replace(base, k_core=base.k_core or args.k_core, **explicit)


def run_convert(args):
    """The convert sub-command."""
    if args.format == "vae_cf":
        options = {"--sep": args.sep, "--user-col": args.user_col, "--item-col": args.item_col,
                   "--rating-col": args.rating_col, "--time-col": args.time_col,
                   "--no-header": args.no_header or None, "--min-rating": args.min_rating,
                   "--min-user-inter": args.min_user_inter, "--min-item-inter": args.min_item_inter,
                   "--k-core": args.k_core or None, "--multvae": args.multvae or None}
        given = [k for k, v in options.items() if v is not None]
        if given:
            raise ConversionError(f"{', '.join(given)}: not with --format vae_cf, whose files are "
                                  f"already preprocessed and split")
        import_vae_cf(args.input, args.out, args.name or Path(args.input).resolve().name,
                      log=None if args.quiet else print)
        return
    generic = {"--sep": args.sep, "--user-col": args.user_col, "--item-col": args.item_col,
               "--rating-col": args.rating_col, "--time-col": args.time_col,
               "--no-header": args.no_header or None}
    layout = None
    if args.format == "csv":
        default_user, default_item = ("0", "1") if args.no_header else ("user_id", "item_id")
        layout = generic_layout(sep=args.sep or ",", user=args.user_col or default_user,
                                item=args.item_col or default_item, rating=args.rating_col,
                                timestamp=args.time_col, header=not args.no_header)
    else:
        given = [k for k, v in generic.items() if v is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConversionError(f"{', '.join(given)} only {verb} to --format csv "
                                  f"(the MovieLens formats have a fixed layout)")
    convert(args.input, args.out, name=args.name, fmt=args.format, layout=layout,
            filters=_filters(args), chunksize=args.chunksize,
            log=None if args.quiet else print)


def run_synthetic(args):
    """The synthetic sub-command."""
    if args.interactions is not None and args.density is not None:
        raise SyntheticDataError("give --interactions or --density, not both")
    if args.preset:
        shape = PRESETS[args.preset]
    else:
        missing = [o for o, v in (("--users", args.users), ("--items", args.items)) if v is None]
        if args.interactions is None and args.density is None:
            missing.append("--interactions or --density")
        if missing:
            raise SyntheticDataError(f"without --preset, give {', '.join(missing)}")
        shape = Shape(n_users=args.users, n_items=args.items, n_interactions=0)
    changes = {k: v for k, v in (("n_users", args.users), ("n_items", args.items),
                                  ("item_exponent", args.item_exponent),
                                  ("user_exponent", args.user_exponent),
                                  ("min_user_inter", args.min_user_inter)) if v is not None}
    if args.interactions is not None or args.density is not None:
        changes.update(n_interactions=args.interactions, density=args.density)
    if args.no_timestamp:
        changes["timestamps"] = False
    shape = replace(shape, **changes)
    default = f"{args.preset}-synthetic" if args.preset else "synthetic"
    name = default if args.name is None else args.name  # --name "" is refused, not replaced
    generate(args.out, name, shape, seed=args.seed, log=None if args.quiet else print)


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "export":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "export":
            run_export(args, extra)
        else:
            {"convert": run_convert, "synthetic": run_synthetic}[args.command](args)
    except (RecBoleBetaError, OSError) as err:
        # OSError: e.g. an unwritable output directory; still one line, not a traceback
        return fail(err)
    except MemoryError as err:  # e.g. synthetic --users 1e12: numpy says how much it could not allocate
        return fail(f"out of memory: {err or 'an allocation failed'}; ask for fewer users, items or interactions")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
