"""``python -m recbole_beta.experiments``: run a comparison or ablation sweep, then write its report."""

import argparse
import logging
import sys

from recbole_beta.errors import RecBoleBetaError, fail


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_beta.experiments",
        description="Run every model x setting x seed of a YAML spec through RecBole's trainer and evaluator, "
        "then write tables (CSV, JSON, Markdown) and figures (PNG, SVG). Finished runs are skipped when rerun.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a spec (a comparison, or an ablation when it has a grid or cells)"),
                       ("compare", "the same as run"), ("ablation", "the same as run; the spec must have a grid or cells")):
        p = sub.add_parser(name, help=text)
        p.add_argument("spec", help="YAML spec (see recbole_beta/experiments/spec.py and docs/)")
        p.add_argument("--out", required=True, help="folder for runs/, tables and figures/")
        p.add_argument("--seeds", type=int, default=None, help="override the spec: this many seeds from 2020")
        p.add_argument("--no-figures", action="store_true", help="tables only")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--jobs", type=int, default=1,
                       help="local: this many runs at once, each in a process of its own (default 1: one after "
                       "another in this process)")
        p.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local (default: this machine, --jobs processes) or ray (each run a Ray task, on a local "
                       "instance or a cluster)")
        p.add_argument("--cpus", type=int, default=None,
                       help="ray: CPUs of the local Ray instance started for the sweep (default: all)")
        p.add_argument("--ray_address", default=None,
                       help="ray: address of an existing Ray cluster instead (auto, HOST:6379)")
        p.add_argument("--cpus_per_run", type=float, default=None,
                       help="ray: CPUs each run reserves, and its torch threads (default 1)")
        p.add_argument("--gpus_per_run", "--gpus", type=float, default=None, dest="gpus_per_run",
                       help="ray: GPUs each run reserves (default 0: the CPU)")
    p = sub.add_parser("report", help="rewrite the tables and figures of a sweep folder")
    p.add_argument("out", help="sweep folder")
    p.add_argument("--no-figures", action="store_true")
    p = sub.add_parser("plan", help="from a finished pilot sweep, the seeds per fold each comparison needs")
    p.add_argument("pilot", help="a finished sweep folder with at least 2 seeds per fold")
    p.add_argument("--margin", action="append", required=True, metavar="M or METRIC=M",
                   help="the equivalence margin (repeat for several metrics); a bare M applies to --metric")
    p.add_argument("--metric", default="NDCG@100", help="the metric of a bare --margin (default NDCG@100)")
    p.add_argument("--power", type=float, default=0.8, help="the power to plan for (default 0.8)")
    p.add_argument("--labels", nargs="+", default=None, help="only these methods (default: every one in the pilot)")
    p.add_argument("--csv", default=None, help="also write the plan's table to this CSV file")
    return parser


def _margins(values, metric):
    """``--margin`` values (``M`` or ``METRIC=M``) as {metric: M}; a SpecError names a bad one."""
    from recbole_beta.experiments.spec import SpecError

    margins = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            margin = float(number)
        except ValueError:
            margin = float("nan")
        if not (margin > 0 and margin != float("inf")):
            raise SpecError(f"--margin {value!r} is not allowed: give a number > 0, or METRIC=number")
        margins[name or metric] = margin
    return margins


def _plan(args):
    from recbole_beta.experiments.plan import format_plan, plan_seeds
    from recbole_beta.experiments.spec import SpecError

    if not 0 < args.power < 1:
        raise SpecError(f"--power {args.power:g} is not allowed: give a number in (0, 1)")
    table = plan_seeds(args.pilot, _margins(args.margin, args.metric), power=args.power, labels=args.labels)
    print(format_plan(table, args.power))
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from recbole_beta.experiments.report import write_report
    from recbole_beta.experiments.runner import run_sweep
    from recbole_beta.experiments.spec import SpecError, load_spec

    try:
        if args.command == "plan":
            return _plan(args)
        if args.command == "report":
            paths = write_report(args.out, figures=not args.no_figures)
        else:
            spec = load_spec(args.spec, {"seeds": args.seeds} if args.seeds else None)
            if args.command == "ablation" and spec.cells == [{}]:
                raise SpecError("an ablation spec needs a 'grid' or 'cells'")
            # RecBole logs every run to log/; on the console the progress bar says enough
            ran, failed = run_sweep(spec, args.out, progress=not args.quiet, jobs=args.jobs, engine=args.engine,
                                    cpus=args.cpus, ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                                    gpus_per_run=args.gpus_per_run, console_level=logging.WARNING)
            print(f"{ran} runs done now ({failed} failed); {len(spec.runs())} in the sweep")
            paths = write_report(args.out, spec, figures=not args.no_figures)
    except RecBoleBetaError as error:
        return fail(error)
    except OSError as error:  # the report's files: a full disk, a folder gone
        where = f" {error.filename}" if error.filename else ""
        return fail(f"cannot write{where}: {error.strerror or error}")
    print(f"report: {[str(p) for p in paths if p.name == 'report.md'][0]}")
    if args.command != "report" and failed:
        # exit 1: the sweep ran but is not complete (RecBole's errors are in report.md and each run's record)
        print(f"recbole-beta: {failed} of {ran} runs failed (listed in the report); run the sweep again to retry "
              "them", file=sys.stderr)
        return 1
    return 0
