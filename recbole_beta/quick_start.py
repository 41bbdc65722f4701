"""The one way a run is built from a config: used by the CLI, the experiments and the tuning alike.

It follows RecBole's ``run_recbole`` step for step (same seeding points, so a RecBole model run
here gives RecBole's numbers), with the plugin's Config, model lookup, dataloaders and trainers.
"""

import json
import os
import time
from logging import getLogger

import torch.distributed as dist
from recbole.data import data_preparation as recbole_data_preparation
from recbole.data.dataloader import UserDataLoader
from recbole.data.transform import construct_transform
from recbole.data.utils import load_split_dataloaders, save_split_dataloaders
from recbole.utils import get_environment, get_flops, get_local_time, init_seed, set_color

from recbole_beta.checkpoint import read_checkpoint
from recbole_beta.compat import init_logger
from recbole_beta.config import Config, device_warnings, unknown_key_warnings
from recbole_beta.data.dataset import create_dataset  # RecBole's, with the plugin's faster reader
from recbole_beta.data.fullsort import eval_loaders, lean_eval_applies
from recbole_beta.data.heldout import HeldOutDataset, heldout_data_preparation, is_strong, split_fingerprint, split_keys
from recbole_beta.errors import ConfigError, DatasetError, DatasetNotFoundError, OutputError, RecBoleBetaError, check
from recbole_beta.evaluation import RecordingEvaluator, per_user_metrics, training_activity
from recbole_beta.files import ensure_writable, plain, write_json
from recbole_beta.fold_in import attach_fold_in
from recbole_beta.registry import get_model, get_trainer, is_plugin_vae
from recbole_beta.trainer import PluginTrainerMixin


def check_dataset(config):
    """Fail early, with where the files go, if the dataset's atomic files are missing.

    With ``download: True`` a missing dataset that RecBole hosts (or that ``download_url``
    points to) is fetched first with RecBole's own download (see ``recbole_beta.data.download``).
    """
    name, path = config["dataset"], config["data_path"]
    parts = config["benchmark_filename"] or [None]

    def missing_files():
        files = (os.path.join(path, f"{name}.{part}.inter" if part else f"{name}.inter") for part in parts)
        return [file for file in files if not os.path.isfile(file)]

    missing = missing_files()
    if missing and config["download"]:
        from recbole_beta.data.download import download_dataset

        download_dataset(config)  # raises DatasetNotFoundError when it cannot
        missing = missing_files()
    if missing:
        from recbole_beta.data.download import is_downloadable

        download_hint = (
            "; or add --download=True to download it with RecBole's downloader"
            if not config["download"] and is_downloadable(config)
            else ""
        )
        raise DatasetNotFoundError(
            f"dataset={name!r} not found: RecBole reads atomic files and {missing[0]} does not exist. "
            f"Put {name}.inter in {path}/ (see dataset/README.md; `python -m recbole_beta data convert` "
            f"turns raw MovieLens or CSV files into it), or set --data_path to the folder holding {name}/. "
            f"ml-100k needs no files: RecBole ships it{download_hint}"
        )


def data_preparation(config, dataset):
    """RecBole's split and dataloaders; the plugin's models train on whole user rows.

    RecBole picks its user-row dataloader by model name (MultiVAE, RecVAE, ...), a list the
    plugin's models are not on, so they get the same loaders here; with full ranking, their valid
    and test loaders are :class:`~recbole_beta.data.fullsort.CSRFullSortEvalDataLoader` (RecBole's
    batches, without its samplers).
    """
    if not is_plugin_vae(config.model_class):
        return recbole_data_preparation(config, dataset)
    dataloaders = load_split_dataloaders(config)
    if dataloaders is not None:
        dataset._change_feat_format()
        return dataloaders
    built = dataset.build()
    # with full ranking and no training negatives, no sampler is read: the valid and test loaders
    # build their masks from the split (recbole_beta.data.fullsort)
    train_sampler, valid_data, test_data = eval_loaders(config, dataset, built, lean_eval_applies(config))
    train_data = UserDataLoader(config, built[0], train_sampler, shuffle=config["shuffle"])
    if config["save_dataloaders"]:
        save_split_dataloaders(config, dataloaders=(train_data, valid_data, test_data))
    return train_data, valid_data, test_data


def prepare(config):
    """Dataset, dataloaders, model and trainer for a config, seeded as RecBole seeds them."""
    logger = getLogger()
    check_dataset(config)
    strong = is_strong(config)
    empty = DatasetError(f"dataset={config['dataset']!r}: no interaction is left after RecBole's filters "
                         "(val_interval, user_inter_num_interval, item_inter_num_interval, ...): loosen them")
    try:
        dataset = HeldOutDataset(config) if strong else create_dataset(config)
    except ValueError as error:
        if isinstance(error, RecBoleBetaError):
            raise
        if "empty" in str(error):  # RecBole 1.2.1's "Some feat is empty, please check the filtering settings."
            raise empty from None
        why = " ".join(str(error).split())
        raise DatasetError(f"dataset={config['dataset']!r}: RecBole cannot build it: {why}") from None
    if dataset.inter_num == 0 or dataset.user_num <= 1:
        raise empty
    n_items = dataset.item_num - 1  # id 0 is padding
    check("topk", config["topk"], max(config["topk"]) <= n_items, f"every k must be <= the number of items ({n_items})")
    if strong:  # the split happens in build(): log the dataset after it, with its user groups
        train_data, valid_data, test_data = heldout_data_preparation(config, dataset, is_plugin_vae(config.model_class))
        logger.info(dataset)
    else:
        logger.info(dataset)
        train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    if strong:  # a model built on training users alone: the rows it scores held-out users from
        attach_fold_in(model, dataset.seen_dataset)
    logger.info(model)
    transform = construct_transform(config)
    flops = get_flops(model, dataset, config["device"], logger, transform)
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if isinstance(trainer, PluginTrainerMixin):  # its checkpoints record the split (RecBole's decision trees keep none)
        roles = dataset.roles if strong else None
        trainer.split = {"keys": split_keys(config), "fingerprint": split_fingerprint(train_data._dataset, roles)}
    return dataset, (train_data, valid_data, test_data), model, trainer


def check_outputs(config, saved=True):
    """Fail before any data is read if a folder the run writes to cannot be written: ``results_dir`` (rank 0
    writes the result there) and, when the best model is kept, ``checkpoint_dir``."""
    if config["results_dir"] and config["local_rank"] == 0:
        ensure_writable(config["results_dir"], "results_dir")
    if saved:
        ensure_writable(config["checkpoint_dir"], "checkpoint_dir")


def check_before_data(config, saved, resume):
    """What a run can check before its data is read, in one line each: the output folders, the dataset's
    files, the checkpoint to resume from (missing, not a checkpoint, refused, another run's or split's), and
    ``epochs: 0`` without a checkpoint to evaluate. Returns the checkpoint ``resume`` names, read (on the
    CPU) and checked, for the trainer to resume from without reading it again; None without ``resume``."""
    check_outputs(config, saved)
    check_dataset(config)
    if resume:
        return read_checkpoint(resume, config)
    if config["epochs"] == 0:
        raise ConfigError("epochs", 0, "trains nothing: give epochs >= 1, or epochs=0 with --resume to "
                                       "evaluate a checkpoint")
    return None


def write_result(config, result):
    """Write the run's result as JSON under ``results_dir``; return the path (None if disabled).

    If it cannot be written after all (the disk filled during the run, say), the result is printed in
    full on stdout and the run stops with one line naming the folder and why: the result is not lost.
    """
    directory = config["results_dir"]
    if not directory or config["local_rank"] != 0:
        return None
    path = os.path.join(directory, f"{config['model']}-{config['dataset']}-{get_local_time()}.json")
    try:
        os.makedirs(directory, exist_ok=True)
        return write_json(path, result, indent=2)
    except OSError as error:
        print(json.dumps(plain(result), indent=1, default=str), flush=True)
        raise OutputError(f"cannot write the result file in results_dir={directory!r}: "
                          f"{error.strerror or error}; the result is printed above in full") from None


def _from_rank_zero(value):
    """Rank 0's ``value``, on every rank of a DDP run."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_recbole_beta(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    resume=None,
    queue=None,
    per_user=False,
    argv=(),
    console_level=None,
    test=True,
):
    """Train and test one model (the plugin's or RecBole's) on one dataset.

    Args:
        model (str): model name; None reads it from the config.
        dataset (str): dataset name; None reads it from the config.
        config_file_list (list of str): YAML files, overriding the defaults.
        config_dict (dict): overrides above the files; ``--key=value`` on the command line wins.
        saved (bool): keep the best checkpoint and test the best model (else the last one).
        resume (str): a checkpoint to continue training from.
        queue: for multi-process runs, where rank 0 puts its result.
        per_user (bool): also return ``per_user``, the test metrics of each user (with the
            user's training activity), from RecBole's metric classes on the evaluator's top-k lists.
        argv (list of str): command-line arguments whose ``--key=value`` items override everything
            (the CLI passes its own); by default none, whatever ``sys.argv`` holds.
        console_level (int): if given, the level of RecBole's console log (a sweep's progress bar keeps
            it at WARNING); the log file keeps ``state``.
        test (bool): False: train and validate only; the test users are not evaluated (``test_result`` is
            None; no ``per_user``): a hyperparameter search's trial.

    Returns:
        dict: best_valid_score, best_valid_result, test_result, history (per epoch), checkpoint,
        train_seconds, result_file.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                    argv=list(argv))
    logger = start_logging(config, console_level)
    # what can fail without the data fails before RecBole's long config dump, so its line comes first
    checkpoint = check_before_data(config, saved, resume)
    logger.info(list(argv))
    logger.info(config)

    dataset, (train_data, valid_data, test_data), _, trainer = prepare(config)
    if not config["single_spec"]:  # the default name holds each process's start time: take rank 0's everywhere
        trainer.saved_model_file = _from_rank_zero(trainer.saved_model_file)
    if resume:
        resume_training(trainer, resume, checkpoint)
    per_user = per_user and test
    outcome = train_and_test(config, trainer, (train_data, valid_data, test_data if test else None), saved, per_user)
    result = run_result(config, trainer, dataset, outcome, saved)
    result["result_file"] = write_result(config, result)
    if per_user:
        # what the model was given of each user: training rows, or a held-out user's fold-in
        seen = dataset.seen_dataset if is_strong(config) else train_data._dataset
        result["per_user"] = per_user_result(trainer, dataset, seen, test_data)
    if result["result_file"]:
        logger.info(set_color("result file", "yellow") + f": {result['result_file']}")

    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(plain(result))
    return result


def start_logging(config, console_level=None):
    """Seed as RecBole's ``run_recbole`` does, start RecBole's logger (``console_level``: its console's level, if
    given) and log the config's warnings; return the logger."""
    if not config["single_spec"]:
        # RecBole's ensure_dir (exists? then makedirs) fails on the rank that loses the race: make
        # the folders its logger and trainer create first
        for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
            os.makedirs(folder, exist_ok=True)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config, console_level)
    logger = getLogger()
    # a typo would change nothing, a GPU that is not there would give the CPU, each without a word
    for warning in unknown_key_warnings(config.external_config_dict) + device_warnings(config):
        logger.warning(warning)
    return logger


def resume_training(trainer, resume, checkpoint):
    """Resume ``trainer`` from the file ``resume``, as ``checkpoint`` holds it (:func:`check_before_data`
    read it); say so when there is no epoch left to train."""
    trainer.resume_checkpoint(resume, checkpoint=checkpoint)
    epochs = trainer.config["epochs"]
    if trainer.start_epoch >= epochs:
        getLogger().info(f"epochs={epochs}: the checkpoint's epoch {trainer.start_epoch - 1} is the last; "
                         "no training, the checkpoint is evaluated")


def train_and_test(config, trainer, loaders, saved, per_user):
    """RecBole's ``fit`` on the training and validation loaders, then the test (of the best checkpoint with
    ``saved``, else of the last model; with ``per_user``, recording each user's top-k for
    :func:`per_user_result`; none when the test loader is None). Returns best_valid_score, best_valid_result,
    test_result (None without a test) and train_seconds."""
    logger = getLogger()
    train_data, valid_data, test_data = loaders
    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    train_seconds = time.time() - start
    if not config["single_spec"]:
        dist.barrier()  # rank 0 has written its last checkpoint before any rank loads the best one
    if per_user:
        trainer.evaluator = RecordingEvaluator(config)
    test_result = None
    if test_data is not None:
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    environment_tb = get_environment(config)
    logger.info("The running environment of this training is as follows:\n" + environment_tb.draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {"best_valid_score": best_valid_score, "best_valid_result": best_valid_result,
            "test_result": test_result, "train_seconds": train_seconds}


def run_result(config, trainer, dataset, outcome, saved):
    """The run's result (what :func:`run_recbole_beta` returns, before its result file and per-user metrics):
    ``outcome`` from :func:`train_and_test`, the history, the checkpoint, the config and, under
    ``eval_protocol=strong``, how many users trained, validated and tested."""
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "best_valid_score": outcome["best_valid_score"],
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": outcome["best_valid_result"],
        "test_result": outcome["test_result"],
        "history": trainer.history,
        "train_seconds": outcome["train_seconds"],
        "checkpoint": trainer.saved_model_file if saved else None,
        "config": config.final_config_dict,
    }
    if is_strong(config):
        result["protocol_users"] = {name: len(users) for name, users in dataset.protocol_users.items()}
    return result


def per_user_result(trainer, dataset, seen_dataset, test_data):
    """The test metrics of each user (from the top-k lists the trainer's RecordingEvaluator kept), with what
    the model was given of the user (its rows in ``seen_dataset``) and the dataset's own user token."""
    table = per_user_metrics(trainer.evaluator, test_data, training_activity(seen_dataset))
    # the dataset's own user ids: RecBole's internal ids are renumbered with each split (fold)
    table["user_token"] = dataset.id2token(dataset.uid_field, table["user_id"]).astype(str)
    return table


def _run_rank(rank, model, dataset, config_file_list, kwargs):
    config_dict = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    try:
        run_recbole_beta(
            model, dataset, config_file_list, config_dict, kwargs.get("saved", True), resume=kwargs.get("resume"),
            queue=kwargs["queue"], argv=kwargs.get("argv", ()),
        )
    except RecBoleBetaError as error:  # the launcher raises it again, as one line (not torch's traceback)
        kwargs["queue"].put({_RANK_ERROR: type(error).__name__, "message": str(error)})
        raise


#: the key of what a rank puts on the queue when it stops on a one-line error
_RANK_ERROR = "__rank_error__"


def _raise_rank_error(item):
    """Raise a rank's one-line error in the launcher, as the class it had (a plain RecBoleBetaError if unknown)."""
    import recbole_beta.errors as errors

    cls = getattr(errors, item[_RANK_ERROR], None)
    if not (isinstance(cls, type) and issubclass(cls, RecBoleBetaError)) or cls is errors.ConfigError:
        cls = errors.RecBoleBetaError  # ConfigError takes (key, value, allowed): its message is whole already
    raise cls(item["message"])


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, resume=None,
        nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0, argv=()):
    """Single process, or RecBole's DDP when ``nproc`` > 1 or ``world_size`` > 0: one process per
    GPU with nccl, or per share of the CPU cores with gloo when CUDA is not used (see Config).

    Under DDP every rank resumes from ``resume``; the result is rank 0's (None on a node without it).
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole_beta(model, dataset, config_file_list, config_dict, saved=saved, resume=resume, argv=argv)
    import torch.multiprocessing as mp

    # what fails in one line in a single process fails so here too, before any rank starts (in a
    # rank it would come back as the launcher's traceback)
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict,
                    argv=list(argv))
    check_before_data(config, saved, resume)

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size if world_size > 0 else nproc, "ip": ip, "port": port, "nproc": nproc,
         "offset": group_offset}
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved, "resume": resume, "argv": list(argv)}
    ranks = mp.spawn(_run_rank, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=False)
    # read the result while the ranks run: rank 0 cannot exit before a result larger than the
    # pipe's buffer (64 KB: a long history) is read, so reading it after join() would hang
    result, error = None, None

    def read():
        nonlocal result, error
        while not queue.empty():
            item = queue.get()
            if isinstance(item, dict) and _RANK_ERROR in item:
                error = error or item
            elif result is None:
                result = item

    try:
        while not ranks.join(timeout=0.2):
            read()
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        read()
        if error is None:
            raise
        _raise_rank_error(error)
    read()
    return result

