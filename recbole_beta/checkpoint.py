"""Checkpoints: saving, safe loading, resume checks, and RecBole's own converted.

Checkpoints: saved as plain data that torch's safe loader (``weights_only=True``) reads, checked before a
resume, and RecBole 1.2.1's own checkpoints converted on request.

Why not RecBole's: RecBole 1.2.1 pickles its Config object (and models' numpy/scipy attributes) into
checkpoints with ``pickle_protocol=4`` and reads them back with a bare ``torch.load``, which torch >= 2.6
refuses. :class:`SafeCheckpointMixin` replaces only the saving and loading, for any RecBole ``Trainer``
subclass; training and evaluation run through RecBole's own code. What the plugin's trainers add to a
checkpoint (optimizers and their layout, history, random generators, the split) is theirs: see
:mod:`recbole_beta.trainer`. What RecBole's pickled files would import, and the unpickler that reads them
for the conversion as data (running nothing a file names: RecBole's Config evals its settings when
called), are :mod:`recbole_beta.recbole_pickles`.

    python -m recbole_beta convert-checkpoint IN.pth OUT.pth   # a RecBole 1.2.1 checkpoint, once (cli.py)
"""

import io
import os
import pickle
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from recbole.utils import set_color

from recbole_beta.data.heldout import describe_split, split_keys
from recbole_beta.errors import CheckpointError, OutputError, TrainingDivergedError, fail
from recbole_beta.files import atomic_write, plain, require_file
from recbole_beta.recbole_pickles import Refused, convertible, load_recbole_checkpoint, pickled_globals

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


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint this project wrote, with torch's safe (weights-only) loader."""
    checkpoint = torch.load(str(path), map_location=device, weights_only=True)
    checkpoint["other_parameter"] = decode(checkpoint.get("other_parameter"))
    return checkpoint


#: what every checkpoint holds, the plugin's and RecBole's
_CHECKPOINT_KEYS = ("config", "epoch", "state_dict")


def _refusal(path):
    """Why the safe loader refused ``path``, as one line, never advising to switch it off."""
    found = pickled_globals(path)
    foreign = [f"{module}.{name}" for module, name in found if not convertible(module, name)]
    if foreign:
        return (
            f"cannot resume from {path}: it would import and call {foreign[0]}, which no checkpoint holds "
            "(a tampered file?); the safe loader refused it and nothing in it was run"
        )
    if any(module.startswith("recbole.") for module, _ in found):
        return (
            f"cannot resume from {path}: it holds pickled Python objects (RecBole's Config), as the checkpoints "
            "RecBole 1.2.1 writes itself do, which the safe loader does not read; if you trust the file, convert "
            f"it once with `python -m recbole_beta convert-checkpoint {path} OUT.pth` and resume from "
            "OUT.pth"
        )
    return f"cannot resume from {path}: not a checkpoint (it holds Python objects the safe loader does not read)"


def read_checkpoint(path, config=None, device="cpu"):
    """:func:`load_checkpoint` for ``--resume``, with every failure as one :class:`CheckpointError` line
    naming the file and why: missing, not a checkpoint, refused by the safe loader (a RecBole checkpoint,
    or a tampered file), or, given ``config``, a checkpoint of another model or dataset."""
    path = os.fspath(path)
    require_file(path, lambda why: CheckpointError(f"cannot resume from {path}: {why}"),
                 not_file="not a file (give a .pth checkpoint written by a run)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of RecBole's own files
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError) and pickled_globals(path):
            raise CheckpointError(_refusal(path)) from None
        raise CheckpointError(
            f"cannot resume from {path}: not a checkpoint (torch cannot read it: an empty, truncated or other file)"
        ) from None
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in _CHECKPOINT_KEYS):
        raise CheckpointError(
            f"cannot resume from {path}: not a checkpoint of a run (a torch file without {', '.join(_CHECKPOINT_KEYS)})"
        )
    if "optimizers" not in checkpoint:
        raise CheckpointError(f"cannot resume from {path}: not a recbole-beta checkpoint (no optimizer states)")
    if config is not None:
        saved = checkpoint["config"]
        here = (config["model"], config["dataset"])
        there = (saved.get("model"), saved.get("dataset"))
        if here[0].lower() != str(there[0]).lower() or here[1] != there[1]:
            raise CheckpointError(
                f"cannot resume from {path}: it is a checkpoint of {there[0]} on {there[1]}, "
                f"not of {here[0]} on {here[1]}"
            )
        # checkpoints written before the split was recorded carry none: nothing to compare
        recorded = (checkpoint.get("split") or {}).get("keys")
        if recorded is not None and plain(recorded) != plain(split_keys(config)):
            raise CheckpointError(
                f"cannot resume from {path}: it was trained under {describe_split(recorded)}, this run is "
                f"{describe_split(split_keys(config))}; resumed, the model would have trained on this run's "
                "held-out data: resume with the checkpoint's split keys, or train afresh"
            )
    checkpoint["other_parameter"] = decode(checkpoint.get("other_parameter"))
    return checkpoint


def convert_checkpoint(source, target):
    """Rewrite a checkpoint that RecBole 1.2.1 itself wrote in the plugin's safe format; return ``target``.

    RecBole pickles its Config object into checkpoints, which torch's safe loader refuses. This reads
    such a file, when asked explicitly (``python -m recbole_beta convert-checkpoint IN OUT``), as
    data (:func:`recbole_beta.recbole_pickles.load_recbole_checkpoint`): tensors and arrays through torch's
    and numpy's rebuilders, the Config as its settings; nothing the file names is imported or called. A file
    that would import anything else (``os.system``, say) or call what it may only name (``Config(...)``,
    whose settings RecBole evals; a model class) is refused in one line naming it, and nothing in it runs.
    RecBole's checkpoints hold no valid metrics and no random-generator states, so a run resumed from
    the result continues from the weights and the optimizer, not bit for bit.
    """
    source, target = os.fspath(source), os.fspath(target)
    if not os.path.isfile(source):
        raise CheckpointError(f"cannot convert {source}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            safe = torch.load(source, map_location="cpu", weights_only=True)
        if isinstance(safe, dict) and "optimizers" in safe:
            raise CheckpointError(f"cannot convert {source}: already a recbole-beta checkpoint; resume from it as "
                                  "it is")
    except CheckpointError:
        raise
    except Exception:
        pass  # refused or unreadable: the restricted unpickler below says which
    try:
        old = load_recbole_checkpoint(source)
    except Refused as refused:
        raise CheckpointError(
            f"cannot convert {source}: {refused} (a tampered file?); refused, and nothing in it was run"
        ) from None
    except CheckpointError as error:
        raise CheckpointError(f"cannot convert {source}: {error}; nothing in it was run") from None
    except Exception:
        raise CheckpointError(
            f"cannot convert {source}: not a checkpoint RecBole wrote (torch cannot read it: an empty, truncated "
            "or other file)"
        ) from None
    if not isinstance(old, dict) or not all(key in old for key in _CHECKPOINT_KEYS):
        raise CheckpointError(f"cannot convert {source}: not a checkpoint RecBole wrote "
                              f"(no {', '.join(_CHECKPOINT_KEYS)})")
    data = _converted(source, old)
    try:
        atomic_write(target, lambda f: f.write(data), binary=True)
    except OSError as error:  # a missing folder, no permission, a full disk: nothing was written
        raise CheckpointError(f"cannot write {target}: {error.strerror or error}; nothing was written") from None
    return target


def _converted(source, old):
    """RecBole's checkpoint ``old`` (read as data) in the plugin's format, as the bytes torch.save writes,
    checked to be what the safe loader reads; a value that is not raises a one-line CheckpointError."""
    config = old["config"]
    final = getattr(config, "final_config_dict", config)
    if not isinstance(final, dict) or "model" not in final:
        raise CheckpointError(f"cannot convert {source}: its config names no model")
    try:
        epoch, cur_step = int(old["epoch"]), int(old.get("cur_step", 0))
        best_valid_score = float(old.get("best_valid_score", float("-inf")))
    except (TypeError, ValueError, OverflowError):
        raise CheckpointError(f"cannot convert {source}: its epoch, step or best score is not a number") from None
    buffer = io.BytesIO()
    try:
        state = {
            "config": plain(dict(final)),
            "config_overrides": plain(dict(getattr(config, "external_config_dict", {}) or {})),
            "epoch": epoch,
            "cur_step": cur_step,
            "best_valid_score": best_valid_score,
            "best_valid_result": {},
            "history": [],
            "state_dict": old["state_dict"],
            "other_parameter": encode(old.get("other_parameter") or {}),
            "optimizers": {"optimizer": old["optimizer"]} if old.get("optimizer") is not None else {},
            "optimizer_aliases": {},
            "converted_from": os.path.abspath(source),
        }
        torch.save(state, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)  # plain data: the safe loader reads it
    except Exception:
        raise CheckpointError(
            f"cannot convert {source}: it holds objects other than settings, tensors and arrays, which a "
            "checkpoint the safe loader reads cannot keep"
        ) from None
    return buffer.getvalue()


class SafeCheckpointMixin:
    """Put before a RecBole ``Trainer`` subclass: checkpoints that torch's safe loader reads.

    Saving, resuming and loading the best model for the test are RecBole's, with the state as plain
    data and read with ``weights_only=True``. The trainer says what else a checkpoint holds: its
    optimizers (``_optimizer_states`` and ``_load_optimizer_states``, which it must define: see
    :class:`recbole_beta.trainer.PluginTrainerMixin`) and keys of its own, added in ``_checkpoint_state``
    and read from what ``resume_checkpoint`` returns.
    """

    def _checkpoint_state(self, epoch):
        """What a checkpoint holds: RecBole's keys (recbole/trainer/trainer.py lines 299-307) as plain data."""
        return {
            "config": plain(self.config.final_config_dict),
            "config_overrides": plain(self.config.external_config_dict),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": encode(self.model.other_parameter()),
            **self._optimizer_states(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        # mirrors RecBole's Trainer._save_checkpoint (recbole/trainer/trainer.py lines 296-312); changed: the
        # state (_checkpoint_state), and torch.save's default pickle protocol (the weights-only unpickler
        # rejects protocol 4, RecBole's choice) into a file written atomically
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        bad = next((name for name, p in self.model.state_dict().items()
                    if torch.is_tensor(p) and p.is_floating_point() and not torch.isfinite(p).all()), None)
        if bad is not None:  # never a checkpoint to resume from or test that holds NaN/inf weights
            kept = (f"the last good checkpoint {saved_model_file} is kept" if os.path.exists(saved_model_file)
                    else "no checkpoint had been saved")
            raise TrainingDivergedError(
                f"the weights became non-finite ({bad}) by epoch {epoch}; stopped without saving them, {kept}. "
                "Lower learning_rate or the beta keys, or set clip_grad_norm"
            )
        state = self._checkpoint_state(epoch)
        try:
            atomic_write(saved_model_file, lambda f: torch.save(state, f), binary=True)
        except OSError as error:  # a full disk, say: the file written before (if any) is untouched
            kept = "the last checkpoint written is kept" if os.path.exists(saved_model_file) else "none was written"
            raise OutputError(f"cannot save the checkpoint {saved_model_file}: {error.strerror or error}; "
                              f"{kept}") from None
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def save_pretrained_model(self, epoch, saved_model_file):
        # mirrors RecBole's PretrainTrainer.save_pretrained_model (recbole/trainer/trainer.py lines 755-771):
        # the same file, as _save_checkpoint writes it, so that the safe loader reads it for the test (RaCT's
        # actor_pretrain ends there; RecBole pickles its Config into it)
        self._save_checkpoint(epoch, verbose=False, saved_model_file=saved_model_file)
        self.saved_model_file = saved_model_file

    def _load_model_state(self, checkpoint):
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    def resume_checkpoint(self, resume_file, checkpoint=None):
        """RecBole's ``resume_checkpoint``, returning the checkpoint read (for what a subclass keeps in it).

        ``checkpoint``: the file as :func:`read_checkpoint` read it with this run's config (a run checks the
        file before its data is read, ``quick_start.check_before_data``), so that it is not read twice; None
        reads it here."""
        # mirrors recbole/trainer/trainer.py lines 321-342; changed: the file is read with the safe loader and
        # checked (read_checkpoint: one-line CheckpointErrors, another model or dataset among them, where
        # RecBole warns), every optimizer is restored, and weights that do not fit fail in one line too
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        if checkpoint is None:
            checkpoint = read_checkpoint(resume_file, self.config, self.device)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        try:
            self._load_model_state(checkpoint)
            self._load_optimizer_states(checkpoint)
        except (RuntimeError, KeyError, ValueError) as error:
            detail = " ".join(str(error).split())
            raise CheckpointError(
                f"cannot resume from {resume_file}: it does not fit this {self.config['model']} (another "
                f"architecture or item count?): {detail[:300]}"
            ) from None
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")
        return checkpoint

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        # recbole/trainer/trainer.py lines 581-589 (load the best model) with the safe loader; the rest is RecBole's
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            self._load_model_state(load_checkpoint(checkpoint_file, self.device))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress)


if __name__ == "__main__":  # the command moved to the top, with the other command lines
    raise SystemExit(fail("`python -m recbole_beta.checkpoint` is now "
                          "`python -m recbole_beta convert-checkpoint IN OUT`"))
