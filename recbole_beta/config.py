"""RecBole's Config with the plugin's properties loaded as internal defaults.

Priority, lowest first: RecBole's properties < the plugin's ``properties/overall.yaml`` <
``properties/model/<Model>.yaml`` (after the file of each plugin class the model derives from:
``BetaMultVAE.yaml`` under ``ControlledBetaMultVAE.yaml``) < config files < config dict <
``--key=value`` on the command line; so users override the plugin exactly as they override RecBole.

Here also the keys RecBole and the plugin know, the reading of ``--key=value`` arguments, and the checks that
depend on the protocol and the model; each value on its own is checked by :mod:`recbole_beta.config_checks`.
"""

import difflib
import os
import sys
from enum import Enum
from functools import cache
from pathlib import Path

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.config import configurator as recbole_configurator

from recbole_beta import metrics
from recbole_beta.config_checks import check_config_file, check_no_empty_values, check_values
from recbole_beta.defaults import model_files, properties_dir
from recbole_beta.errors import ConfigError, RecBoleBetaError, RecBoleConfigError, check
from recbole_beta.fold_in import PER_USER, check_fold_in_config
from recbole_beta.registry import HELDOUT_RECBOLE_MODELS, get_model, is_plugin_vae, supports_heldout_users

#: keys read elsewhere than in a property file: run_recbole_beta.py's own arguments (RecBole's Config
#: reads every --key=value), RecBole's DDP keys, and keys RecBole sets itself
_OTHER_KEYS = (
    "model", "dataset", "seed", "config_files", "local_rank", "download_url", "resume", "nproc", "world_size",
    "ip", "port", "offset", "group_offset", "single_spec", "device",
)


def split_key_values(args):
    """The ``--key=value`` arguments of ``args`` as (key, value string) pairs, in order, and the arguments that
    are not of that form. The one reading of them for every command line: as RecBole's ``_load_cmd_line``
    reads them (one ``=``; a value holding another is not a key=value argument)."""
    pairs, others = [], []
    for arg in args:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key and sep and "=" not in value:
            pairs.append((key, value))
        else:
            others.append(arg)
    return pairs, others


def given_keys(pairs):
    """The ``(key, value string)`` pairs of a command line as a mapping; a key given twice with two values is one
    :class:`ConfigError` line (RecBole raises a SyntaxError, with a traceback; a plain dict keeps the last)."""
    given = {}
    for key, value in pairs:
        if key in given and given[key] != value:
            raise ConfigError(key, value, f"--{key} is given twice on the command line (as {given[key]} and "
                                          f"as {value}); give each key once")
        given[key] = value
    return given


def convert_values(given):
    """``given`` (key -> value; a value may be a string as the command line gives it) with each string read as
    RecBole reads ``--key=value`` values and ``config_dict`` strings: a Python literal or expression where it
    evaluates to a number, string, list, tuple, dict, bool or None; ``true``/``false`` in any case as bools;
    else the string itself. Returns a new dict.

    Mirrors ``Config._convert_config_dict`` (recbole/config/configurator.py lines 124-147, RecBole 1.2.1), a
    method that reads nothing of its instance; the expression is evaluated where RecBole evaluates it (its
    module's names). The plugin's :class:`Config` converts with this function, so every command line reads
    values as the run script does."""
    converted = {}
    for key, param in given.items():
        if not isinstance(param, str):
            converted[key] = param
            continue
        try:
            value = eval(param, dict(vars(recbole_configurator)))  # RecBole evals these values itself
            if value is not None and not isinstance(value, (str, int, float, list, tuple, dict, bool, Enum)):
                value = param
        except (NameError, SyntaxError, TypeError):
            value = {"true": True, "false": False}.get(param.lower(), param)
        converted[key] = value
    return converted


@cache
def known_keys():
    """Every config key RecBole or the plugin knows: the keys of all their property files (so a key
    added to ``properties/overall.yaml`` or ``properties/model/*.yaml`` is known at once), RecBole's
    argument lists, and :data:`_OTHER_KEYS`."""
    import recbole
    from recbole.utils import dataset_arguments, evaluation_arguments, general_arguments, training_arguments

    keys = set(general_arguments + training_arguments + evaluation_arguments + dataset_arguments)
    roots = [Path(recbole.__file__).resolve().parent / "properties", properties_dir()]
    for root in roots:
        for file in root.rglob("*.yaml"):
            if file.name in ("url.yaml", "checks.yaml"):  # a download list; what keys accept (not keys)
                continue
            try:
                content = yaml.safe_load(file.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue
            if isinstance(content, dict):
                keys.update(content)
    keys.update(_OTHER_KEYS)
    return frozenset(keys)


def closest_known_key(key):
    """The known key nearest to ``key`` (difflib), or None."""
    close = difflib.get_close_matches(key, sorted(known_keys()), n=1)
    return close[0] if close else None


def unknown_key_warnings(keys):
    """One line for each of ``keys`` that neither RecBole nor the plugin knows (a typo changes nothing
    silently otherwise), naming the closest known key. Such keys are still passed on, so a key that a
    model or strategy of your own reads keeps working."""
    lines = []
    for key in keys:
        if key in known_keys():
            continue
        close = closest_known_key(key)
        hint = f" (did you mean {close!r}?)" if close else ""
        lines.append(f"{key} is not a config key RecBole or the plugin knows{hint}; passed on as given")
    return lines


class Config(RecBoleConfig):
    """Config for every model the plugin runs, its own and RecBole's alike.

    The model's own keys are validated as the config is built, so bad input fails before any
    data is read.
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None, argv=None):
        # argv: the command line's ``--key=value`` arguments; None reads sys.argv[1:] as RecBole does
        self._argv = argv
        metrics.register_metrics()  # RecBole checks the names of ``metrics`` as the config is built
        try:
            super().__init__(model, dataset, config_file_list, config_dict)
        except ValueError as error:
            if isinstance(error, RecBoleBetaError):
                raise
            # RecBole's own checks (topk, valid_metric, eval_args, ...) raise bare ValueErrors: one line each
            raise RecBoleConfigError(f"RecBole's Config refused the settings: {' '.join(str(error).split())}") from None
        self.validate()

    def _convert_config_dict(self, config_dict):
        """RecBole's reading of string values (``--key=value``, ``config_dict``), as :func:`convert_values`; in
        place, as RecBole's method converts."""
        config_dict.update(convert_values(config_dict))
        return config_dict

    def _load_config_files(self, file_list):
        """RecBole's ``_load_config_files`` (recbole/config/configurator.py lines 120-128), with every file that
        cannot be used (missing, a folder, not YAML, not a mapping) as one line naming the file and line."""
        for file in file_list or []:
            check_config_file(file, self.yaml_loader)
        return super()._load_config_files(file_list)

    def _load_cmd_line(self):
        """RecBole's ``_load_cmd_line`` (recbole/config/configurator.py lines 165-193) on ``argv`` (None: on
        ``sys.argv[1:]``, as RecBole reads it), so that a caller that is not the command line (a sweep, a search,
        a test) never has to rewrite ``sys.argv``: only ``--key=value`` arguments count, others are ignored. A
        key given twice with two values is one line (RecBole raises a SyntaxError, with a traceback)."""
        argv = self._argv
        if argv is None:
            argv = [] if "ipykernel_launcher" in sys.argv[0] else sys.argv[1:]
        return self._convert_config_dict(given_keys(split_key_values(argv)[0]))

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in (properties_dir() / "overall.yaml", *model_files(model_class, model)):
            self._update_internal_config_dict(os.fspath(file))

    def _set_default_parameters(self):
        # every value is checked first: RecBole's own reading of metrics, topk and valid_metric fails on a
        # bad one deep in its code, or (valid_metric) only once the first epoch has trained
        check_no_empty_values(self.external_config_dict)
        check_values(self.final_config_dict, self.model)
        super()._set_default_parameters()

    def _init_device(self):
        """RecBole's, except that DDP without CUDA runs on the CPU with the gloo backend.

        RecBole 1.2.1 always starts DDP with nccl on ``cuda:local_rank``. Single-process runs and
        DDP on CUDA (``use_gpu`` true, ``gpu_id`` set, a GPU present) go through RecBole's method
        unchanged; the branch below is only taken for DDP when CUDA is not used.
        """
        import torch

        config = self.final_config_dict
        if "local_rank" not in config:
            return super()._init_device()
        # mirrors recbole/config/configurator.py lines 477-484: gpu_id as a string, CUDA_VISIBLE_DEVICES
        # set before CUDA is first asked about
        gpu_id = config["gpu_id"]
        config["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
        if config["use_gpu"] and config["gpu_id"] and torch.cuda.is_available():
            return super()._init_device()  # nccl on cuda:local_rank, as RecBole does
        # mirrors lines 496-514 (the DDP branch) with gloo, the CPU device, and neither
        # torch.cuda.set_device nor the check that gpu_id names nproc GPUs
        torch.distributed.init_process_group(
            backend="gloo",
            rank=config["local_rank"] + config["offset"],
            world_size=config["world_size"],
            init_method=f"tcp://{config['ip']}:{config['port']}",
        )
        config["device"] = torch.device("cpu")
        if "OMP_NUM_THREADS" not in os.environ:
            # the node's ranks share its cores; torch's default (all of them in every process)
            # oversubscribes them: on 2 cores, 2 ranks took 8x longer per epoch
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (config["nproc"] or 1)))
        config["single_spec"] = False
        if config["local_rank"] != 0:
            config["state"] = "error"
            config["show_progress"] = False
            config["verbose"] = False

    def validate(self):
        """Check what depends on the protocol and the model's own keys (raises ConfigError); each value on
        its own was checked against properties/checks.yaml as the config was built. The plugin's models check
        their own keys (``validate_config``); RecBole's read theirs as they are built."""
        check_protocol_keys(self)
        if self["eval_protocol"] == "strong":
            name = self.model_class.__name__
            if not supports_heldout_users(self.model_class):
                raise ConfigError(
                    "model", self["model"],
                    f"eval_protocol=strong evaluates users the model never trained on, and {name} holds "
                    f"{'a parameter per user, which cannot be folded in' if name in PER_USER else 'no fold-in step'}; "
                    f"it runs the plugin's models and RecBole's {', '.join(HELDOUT_RECBOLE_MODELS)} "
                    "(or use eval_protocol=weak)",
                )
            if not is_plugin_vae(self.model_class):
                check_fold_in_config(name, self)
        if is_plugin_vae(self.model_class):
            self.model_class.validate_config(self)
        return self


def check_protocol_keys(config):
    """Validate the keys of ``eval_protocol`` (the held-out-user split is recbole_beta.data.heldout) that depend
    on it and on each other (raises ConfigError); the data is not read."""
    protocol = config["eval_protocol"]
    folds, fold = config["heldout_folds"], config["fold"]
    if protocol != "strong":
        check("heldout_folds", folds, not folds, "folds of held-out users need eval_protocol=strong")
        check("fold", fold, fold is None, "a test fold needs eval_protocol=strong and heldout_folds")
        return
    check("heldout_folds", folds,
          isinstance(folds, int) and not isinstance(folds, bool) and (folds == 0 or folds >= 3),
          "must be 0 (one split) or an integer >= 3 (folds of held-out users)")
    if fold is not None:
        check("fold", fold, bool(folds), "a test fold needs heldout_folds (an integer >= 3)")
        check("fold", fold, isinstance(fold, int) and not isinstance(fold, bool) and 0 <= fold < folds,
              f"must be an integer in [0, {int(folds)}) (heldout_folds={int(folds)})")
    heldout = config["heldout_users"]
    check(
        "heldout_users",
        heldout,
        not isinstance(heldout, bool)
        and (
            (isinstance(heldout, int) and heldout >= 1)
            or (isinstance(heldout, float) and 0 < heldout < 0.5)
        ),
        "must be an integer >= 1 (users in each of validation and test) or a fraction of all users in (0, 0.5)",
    )
    mode = (config["eval_args"] or {}).get("mode")
    check(
        "eval_args",
        config["eval_args"],
        mode == "full" or (isinstance(mode, dict) and set(mode.values()) == {"full"}),
        "eval_protocol=strong ranks every item: eval_args.mode must be 'full'",
    )
    check(
        "benchmark_filename",
        config["benchmark_filename"],
        not config["benchmark_filename"],
        "eval_protocol=strong splits one .inter file (a pre-split one carries a protocol_role column); "
        "unset benchmark_filename",
    )


def device_warnings(config):
    """One line when the config names a GPU (``device`` or ``gpu_id`` given) and the run goes to the CPU: RecBole
    falls back to the CPU without a word when torch finds no GPU (or not the one ``gpu_id`` names)."""
    given = config.external_config_dict
    asked = [f"{key}={given[key]!r}" for key in ("device", "gpu_id")
             if given.get(key) not in (None, "") and str(given[key]).strip().lower() != "cpu"]
    if not asked or config["device"].type != "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [f"{' and '.join(asked)} {'ask' if len(asked) > 1 else 'asks'} for a GPU, but torch finds none"
            f"{f' (CUDA_VISIBLE_DEVICES={visible!r})' if visible else ''}: the run goes to the CPU"]
