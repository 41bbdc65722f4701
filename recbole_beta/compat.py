"""RecBole 1.2.1 on today's stack: checkpoints that torch >= 2.6 loads with ``weights_only=True``.

RecBole pickles its Config object (and models' numpy/scipy attributes) into checkpoints and
reads them back with a bare ``torch.load``, which torch >= 2.6 refuses. :class:`SafeCheckpointMixin`
replaces only the saving and loading, for any RecBole ``Trainer`` subclass: checkpoints hold plain
data (the config as a dict, numpy/scipy values as tensors) and are read with the safe loader.
Training and evaluation run through RecBole's own code. The checkpoint also carries the random
number generator states, so a resumed run continues exactly as an uninterrupted one.
"""

import logging
import os
import random

import numpy as np
import scipy.sparse as sp
import torch
from recbole.utils import init_logger as recbole_init_logger
from recbole.utils import set_color

from recbole_beta.errors import TrainingDivergedError
from recbole_beta.files import atomic_write, plain

_TAG = "__recbole_beta__"


def encode(value):
    """Make model attributes (numpy arrays, scipy sparse matrices, nested dicts) safe to save."""
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(encode(v) for v in value)
    if isinstance(value, np.ndarray):
        return {_TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
    if sp.issparse(value):
        coo = value.tocoo()
        return {
            _TAG: "sparse",
            "format": value.format,
            "shape": list(coo.shape),
            "row": torch.from_numpy(coo.row.astype(np.int64)),
            "col": torch.from_numpy(coo.col.astype(np.int64)),
            "data": torch.from_numpy(coo.data),
        }
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode(value):
    """Inverse of :func:`encode`."""
    if isinstance(value, dict):
        kind = value.get(_TAG)
        if kind == "ndarray":
            return value["data"].numpy()
        if kind == "sparse":
            coo = sp.coo_matrix(
                (value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())), shape=tuple(value["shape"])
            )
            return coo.asformat(value["format"])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(decode(v) for v in value)
    return value


def capture_rng(train_data=None):
    """The states of every generator a training epoch draws from, as tensors and ints."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if train_data is not None and getattr(train_data, "generator", None) is not None:
        # RecBole's dataloaders shuffle with a generator of their own
        state["loader"] = train_data.generator.get_state()
    return state


def restore_rng(state, train_data=None):
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "loader" in state and train_data is not None:
        train_data.generator.set_state(state["loader"])


_run_handlers = []
#: if set, the level of RecBole's console handler (its log file keeps config["state"])
console_level = None


def init_logger(config):
    """RecBole's init_logger, once per run even within one process.

    RecBole attaches its console and file handlers with ``logging.basicConfig``, which does nothing
    when the root logger has handlers already: a second run in the same process (a sweep, a search,
    a test session) would log into the first run's file, or nowhere. So the previous run's handlers
    are closed, and other handlers (pytest's, say) are set aside while RecBole adds its own.
    """
    root = logging.getLogger()
    for handler in _run_handlers:
        root.removeHandler(handler)
        handler.close()
    _run_handlers.clear()
    foreign = list(root.handlers)
    for handler in foreign:
        root.removeHandler(handler)
    recbole_init_logger(config)
    _run_handlers.extend(root.handlers)
    if console_level is not None:
        for handler in _run_handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(max(handler.level, console_level))
    for handler in foreign:
        root.addHandler(handler)


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint this project wrote, with torch's safe (weights-only) loader."""
    checkpoint = torch.load(str(path), map_location=device, weights_only=True)
    checkpoint["other_parameter"] = decode(checkpoint.get("other_parameter"))
    return checkpoint


class SafeCheckpointMixin:
    """Put before a RecBole ``Trainer`` subclass: safe checkpoints, exact resume, finite-loss check.

    Also keeps ``history``: one dict per epoch with the training losses, the time it took and, on
    evaluated epochs, the valid metrics.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.history = []
        self._train_data = None  # whose shuffling generator a checkpoint captures
        self._pending_rng = None  # generator states of a resumed checkpoint, restored by fit()

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        if self._pending_rng is not None:
            restore_rng(self._pending_rng, train_data)
            self._pending_rng = None
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _history_entry(self, epoch_idx):
        if not self.history or self.history[-1]["epoch"] != epoch_idx:
            self.history.append({"epoch": epoch_idx})
        return self.history[-1]

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        # called once per epoch, right after training: the place to record it
        entry = self._history_entry(epoch_idx)
        entry["train_time"] = e_time - s_time
        if isinstance(losses, tuple):
            entry.update({f"train_loss{i + 1}": float(part) for i, part in enumerate(losses)})
            losses_total = sum(losses)
        else:
            losses_total = losses
        entry["train_loss"] = float(losses_total)
        return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if self.history:
            self.history[-1]["valid_score"] = float(valid_score)
            self.history[-1]["valid"] = {k: float(v) for k, v in valid_result.items()}
        return valid_score, valid_result

    def _check_nan(self, loss):
        if not torch.isfinite(loss):
            kept = (
                f"the last good checkpoint {self.saved_model_file} is kept"
                if os.path.exists(self.saved_model_file)
                else "no checkpoint had been saved yet"
            )
            epoch = self.history[-1]["epoch"] + 1 if self.history else self.start_epoch
            raise TrainingDivergedError(
                f"training loss became {loss.item()} in epoch {epoch}; stopped, {kept}. "
                "Lower learning_rate or the beta keys, or set clip_grad_norm"
            )

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": plain(self.config.final_config_dict),
            "config_overrides": plain(self.config.external_config_dict),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": plain(dict(self.best_valid_result or {})),
            "history": plain(self.history),
            "state_dict": self.model.state_dict(),
            "other_parameter": encode(self.model.other_parameter()),
            **self._optimizer_states(),
            "rng_state": capture_rng(self._train_data),
        }
        # default pickle protocol: the weights-only unpickler rejects protocol 4 (RecBole's choice)
        atomic_write(saved_model_file, lambda f: torch.save(state, f), binary=True)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _optimizers(self):
        """The trainer's optimizers by attribute name (RecVAETrainer keeps one per half, and points
        ``optimizer`` at whichever ran last)."""
        return {name: value for name, value in vars(self).items() if isinstance(value, torch.optim.Optimizer)}

    def _optimizer_states(self):
        states, aliases, seen = {}, {}, {}
        for name, optimizer in sorted(self._optimizers().items(), key=lambda item: item[0] == "optimizer"):
            if id(optimizer) in seen:
                aliases[name] = seen[id(optimizer)]
            else:
                seen[id(optimizer)] = name
                states[name] = optimizer.state_dict()
        return {"optimizers": states, "optimizer_aliases": aliases}

    def _load_optimizer_states(self, checkpoint):
        optimizers = self._optimizers()
        for name, state in checkpoint["optimizers"].items():
            optimizers[name].load_state_dict(state)
        for alias, target in checkpoint["optimizer_aliases"].items():
            setattr(self, alias, optimizers[target])

    def _load_model_state(self, checkpoint):
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = load_checkpoint(resume_file, self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result") or None
        self.history = list(checkpoint.get("history", []))
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                "Architecture configuration given in config file is different from that of checkpoint. "
                "This may yield an exception while state_dict is being loaded."
            )
        self._load_model_state(checkpoint)
        self._load_optimizer_states(checkpoint)
        # restored when fit() starts, so nothing drawn in between shifts the streams
        self._pending_rng = checkpoint.get("rng_state")
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            self._load_model_state(load_checkpoint(checkpoint_file, self.device))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress)
