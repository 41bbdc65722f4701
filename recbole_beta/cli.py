"""Command line of ``run_recbole_beta.py`` (also ``python -m recbole_beta`` and the ``recbole-beta`` command).

Besides a run (whose arguments are all ``--key=value``), two sub-commands, by their first word:
``python -m recbole_beta data {convert,synthetic,export} ...`` (:mod:`recbole_beta.data_cli`) and
``python -m recbole_beta convert-checkpoint IN.pth OUT.pth``. They sit here, at the top with the other command
lines, so that no lower part holds a command line that imports the parts above it (``data export`` builds a
Config, which reads the models, which read the users' history in ``data/``).
"""

import argparse
import sys

from recbole_beta.errors import RecBoleBetaError, fail


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_recbole_beta.py",
        description="Train and test a recbole-beta or RecBole model with RecBole's loaders, trainer and "
        "full-ranking evaluation. Any other --key=value sets that config key. Other commands: "
        "`python -m recbole_beta data --help` (data tools), "
        "`python -m recbole_beta convert-checkpoint IN.pth OUT.pth` (a RecBole 1.2.1 checkpoint, for --resume).",
    )
    parser.add_argument("--model", "-m", default="BetaMultVAE", help="model name (default: BetaMultVAE)")
    parser.add_argument("--dataset", "-d", default="ml-100k",
                        help="dataset name (default: ml-100k, shipped with RecBole)")
    parser.add_argument("--config_files", default=None, help="YAML config files, separated by spaces")
    parser.add_argument("--resume", default=None, help="checkpoint (.pth) to continue training from")
    parser.add_argument("--nproc", type=int, default=1,
                        help="DDP processes per node: one per GPU (nccl), or CPU processes (gloo) without CUDA")
    parser.add_argument("--ip", default="localhost", help="DDP master address")
    parser.add_argument("--port", default="5678", help="DDP master port")
    parser.add_argument("--world_size", type=int, default=-1, help="total DDP processes over all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="rank of this node's first process")
    return parser


def convert_checkpoint_command(argv):
    """``python -m recbole_beta convert-checkpoint IN OUT``: a checkpoint RecBole 1.2.1 wrote, in the plugin's
    safe format."""
    parser = argparse.ArgumentParser(
        prog="python -m recbole_beta convert-checkpoint",
        description="Rewrite a checkpoint RecBole 1.2.1 wrote (which torch's safe loader refuses) in the "
        "plugin's safe format, for --resume. The file is read as data: nothing it names is imported or run.",
    )
    parser.add_argument("source", help="the RecBole checkpoint (.pth)")
    parser.add_argument("target", help="where the converted checkpoint goes (.pth)")
    args = parser.parse_args(argv)
    from recbole_beta.checkpoint import convert_checkpoint, load_checkpoint

    try:
        convert_checkpoint(args.source, args.target)
    except RecBoleBetaError as error:
        return fail(error)
    state = load_checkpoint(args.target)
    model, dataset = state["config"]["model"], state["config"]["dataset"]
    print(f"wrote {args.target}: {model} on {dataset}, after epoch {state['epoch']}")
    print(f"resume with: python run_recbole_beta.py --model={model} --dataset={dataset} --resume={args.target}")
    return 0


def data_command(argv):
    from recbole_beta.data_cli import main as data_main

    return data_main(argv)


COMMANDS = {"data": data_command, "convert-checkpoint": convert_checkpoint_command}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args, rest = build_parser().parse_known_args(argv)  # the rest are --key=value, read by RecBole's Config
    from recbole_beta.config import split_key_values  # heavy imports after --help
    from recbole_beta.quick_start import run

    for arg in split_key_values(rest)[1]:  # RecBole's Config reads --key=value only: others would be dropped silently
        return fail(f"{arg!r} is not a --key=value argument: write a config key with its value, e.g. "
                    f"--{arg.lstrip('-').partition('=')[0] or 'epochs'}=VALUE")
    config_files = args.config_files.strip().split(" ") if args.config_files else None

    try:
        result = run(
            args.model, args.dataset, config_file_list=config_files, resume=args.resume, nproc=args.nproc,
            world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset, argv=argv,
        )
    except RecBoleBetaError as error:
        return fail(error)  # 1 when the loss diverged, 2 for bad input
    except OSError as error:  # a full disk or a folder gone while saving: one line, no traceback
        where = f" {error.filename}" if error.filename else ""
        return fail(f"cannot write{where}: {error.strerror or error}")
    if result is not None:
        print(f"best valid: {dict(result['best_valid_result'] or {})}")
        print(f"test result: {dict(result['test_result'] or {})}")
        if result.get("result_file"):
            print(f"result file: {result['result_file']}")
    return 0
