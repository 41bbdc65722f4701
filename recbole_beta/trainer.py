"""The plugin's trainers: RecBole's own, with what the plugin adds to every one of them.

- :class:`PluginTrainerMixin`: the per-epoch history, exact resume (the optimizers, each parameter's
  state in the layout the model holds it in, the random generators' states and the split in the
  checkpoint) and the stop on a non-finite loss, over :mod:`~recbole_beta.checkpoint`'s safe checkpoints. The registry
  puts it before every RecBole ``Trainer`` it hands out (``registry.plugin_trainer``) and before ours.
- :class:`CPUDistributed`: RecBole's DDP wrapping of the model, on the CPU (gloo) too.
- :class:`BetaTrainer`: RecBole's ``Trainer`` for the BetaMultVAE family, with the beta of each epoch (tallied
  here from each batch's), under DDP the KL a feedback strategy steps on averaged over the ranks, and
  ``enable_amp`` in evaluation too (:mod:`~recbole_beta.precision`).
"""

import os
import random
import time

import numpy as np
import torch
from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader
from recbole.trainer import Trainer
from recbole.trainer.trainer import AbstractTrainer, PretrainTrainer
from recbole.utils import set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_beta.checkpoint import SafeCheckpointMixin
from recbole_beta.collector import FastCollector
from recbole_beta.errors import CheckpointError, TrainingDivergedError
from recbole_beta.files import plain
from recbole_beta.model.sparse import TransposedLinear
from recbole_beta.precision import amp_unavailable


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
    if isinstance(train_data, AbstractDataLoader):
        # RecBole's dataloaders shuffle with a generator of their own (its knowledge-based loader, two loaders
        # in one, is not one of them: its loaders' generators are not captured)
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


def _transposed(model, optimizer):
    """Positions, in ``optimizer``'s parameter order, of the parameters a module of ``model`` holds
    transposed: those a :class:`~recbole_beta.model.sparse.TransposedLinear` names in its
    ``transposed_parameters`` (the plugin's sparse input path holds its first layer's weight as W^T; the
    dense path as W)."""
    ids = {id(getattr(module, name)) for module in model.modules() if isinstance(module, TransposedLinear)
           for name in module.transposed_parameters}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return [i for i, p in enumerate(params) if id(p) in ids]


def _transpose_to_fit(optimizer, saved, here):
    """Transpose the 2-d state tensors (Adam's moments) of each parameter held transposed in the
    checkpoint (positions ``saved``) but not in this run (``here``), or the other way round: model
    state dicts hold W either way, optimizer states the parameter's own layout. torch's
    ``load_state_dict`` checks parameter counts, not shapes, and its fused Adam steps on moments of
    the right size in the wrong shape without a word."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for position in set(saved) ^ set(here):
        state = optimizer.state.get(params[position], {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() == 2:
                state[key] = value.t().contiguous()


def pretrain_epochs_note(trainer, config):
    """One line when ``epochs`` is set and the run pre-trains instead: RecBole's PretrainTrainer (RaCT's
    ``actor_pretrain`` and ``critic_pretrain`` stages) trains for ``pretrain_epochs`` (RaCT's default: 150)
    whatever ``epochs`` says, without validation; else None."""
    stage = config["train_stage"]  # what RaCT and S3Rec read (None for a model without stages)
    given = config.external_config_dict
    if not isinstance(trainer, PretrainTrainer) or not str(stage).endswith("pretrain") or "epochs" not in given:
        return None
    if given["epochs"] == trainer.pretrain_epochs:
        return None
    return (f"{config['model']} train_stage={stage} trains for pretrain_epochs={trainer.pretrain_epochs} epochs, "
            f"not epochs={given['epochs']}: set --pretrain_epochs instead (the model is tested from the last file "
            f"saved every save_step={config['save_step']} epochs, so a multiple of it)")


class PluginTrainerMixin(SafeCheckpointMixin):
    """Put before a RecBole ``Trainer`` subclass: safe checkpoints (:class:`SafeCheckpointMixin`), and

    - ``history``: one dict per epoch with the training losses and the time the epoch took (recorded in
      ``_train_epoch``) and, on evaluated epochs, the valid score and metrics (in ``_valid_epoch``);
    - exact resume: a checkpoint also holds the history, the best valid result and the states of the
      random generators, so a resumed run continues exactly as an uninterrupted one;
    - a stop on a non-finite training loss: a one-line :class:`TrainingDivergedError`;
    - ``enable_amp`` where the hardware runs it (:func:`~recbole_beta.precision.amp_unavailable`): on a CPU
      without bfloat16 instructions, one warning and float32;
    - a cheaper full-ranking evaluation: :class:`~recbole_beta.collector.FastCollector` as the
      ``eval_collector``, RecBole's numbers without its dense users x items matrix per batch.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole's Trainer.__init__ made a Collector: the same rec.topk without a users x items matrix
        self.eval_collector = FastCollector(config)
        self.history = []
        self._epoch_idx = None  # the epoch in training, for the stop's message
        self._train_data = None  # whose shuffling generator a checkpoint captures
        self._pending_rng = None  # generator states of a resumed checkpoint, restored by fit()
        self._unsaved_valid_result = None  # the latest valid result, until a checkpoint holds it
        #: the split the run trains on ({"keys": ..., "fingerprint": ...}), set by quick_start.prepare;
        #: checkpoints record it and a resume on another split is refused
        self.split = None
        note = pretrain_epochs_note(self, config)
        if note is not None:  # RecBole would ignore epochs without a word
            self.logger.warning(note)
        why = amp_unavailable(self.device) if self.enable_amp else None
        if why is not None:  # RecBole would run emulated bfloat16, slower than float32, without a word
            self.logger.warning(why)
            self.enable_amp = False

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self._train_data = train_data
        self._unsaved_valid_result = None
        if self._pending_rng is not None:
            restore_rng(self._pending_rng, train_data)
            self._pending_rng = None
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _history_entry(self, epoch_idx):
        if not self.history or self.history[-1]["epoch"] != epoch_idx:
            self.history.append({"epoch": epoch_idx})
        return self.history[-1]

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # the epoch as RecBole's fit sees it: the time of this call and the losses it returns (a
        # trainer's own _train_epoch, RecVAE's say, runs inside, whatever it calls)
        self._epoch_idx = epoch_idx
        start = time.time()
        losses = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        entry = self._history_entry(epoch_idx)
        entry["train_time"] = time.time() - start
        if isinstance(losses, tuple):
            entry.update({f"train_loss{i + 1}": float(part) for i, part in enumerate(losses)})
            losses_total = sum(losses)
        else:
            losses_total = losses
        entry["train_loss"] = float(losses_total)
        return losses

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self._unsaved_valid_result = valid_result
        if self.history:
            self.history[-1]["valid_score"] = float(valid_score)
            self.history[-1]["valid"] = {k: float(v) for k, v in valid_result.items()}
        return valid_score, valid_result

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
        transposed = {name: _transposed(self.model, self._optimizers()[name]) for name in states}
        return {"optimizers": states, "optimizer_aliases": aliases, "optimizer_transposed": transposed}

    def _load_optimizer_states(self, checkpoint):
        optimizers = self._optimizers()
        # checkpoints written before the layouts were recorded (RecBole's, converted, and the plugin's
        # own) hold every parameter as nn.Linear does: nothing transposed
        saved_transposed = checkpoint.get("optimizer_transposed", {})
        for name, state in checkpoint["optimizers"].items():
            optimizer = optimizers[name]
            # which kernel steps (torch's fused or foreach) is this run's choice, not the checkpoint's:
            # the plugin's sparse path steps with the fused one, the dense path with RecBole's loop.
            # Set before loading: torch places the loaded state (Adam's step count) by these flags.
            groups = [{**saved, **{k: group[k] for k in ("fused", "foreach") if k in group}}
                      for saved, group in zip(state["param_groups"], optimizer.param_groups)]
            optimizer.load_state_dict({**state, "param_groups": groups + state["param_groups"][len(groups):]})
            _transpose_to_fit(optimizer, saved_transposed.get(name, []), _transposed(self.model, optimizer))
        for alias, target in checkpoint["optimizer_aliases"].items():
            setattr(self, alias, optimizers[target])

    def _check_nan(self, loss):
        # RecBole's hook on every batch's loss (its own raises a bare ValueError, on NaN only)
        if not torch.isfinite(loss):
            kept = (
                f"the last good checkpoint {self.saved_model_file} is kept"
                if os.path.exists(self.saved_model_file)
                else "no checkpoint had been saved yet"
            )
            epoch = self.start_epoch if self._epoch_idx is None else self._epoch_idx
            raise TrainingDivergedError(
                f"training loss became {loss.item()} in epoch {epoch}; stopped, {kept}. "
                "Lower learning_rate or the beta keys, or set clip_grad_norm"
            )

    def _checkpoint_state(self, epoch):
        state = super()._checkpoint_state(epoch)
        # RecBole's fit saves right after an evaluation that improved on the best, and only then sets
        # best_valid_result to it: the evaluation just made is the best one this checkpoint holds
        best_valid_result = self.best_valid_result
        if self._unsaved_valid_result is not None:
            best_valid_result, self._unsaved_valid_result = self._unsaved_valid_result, None
        state["best_valid_result"] = plain(dict(best_valid_result or {}))
        state["history"] = plain(self.history)
        state["rng_state"] = capture_rng(self._train_data)
        if self.split is not None:
            state["split"] = plain(self.split)
        return state

    def resume_checkpoint(self, resume_file, checkpoint=None):
        checkpoint = super().resume_checkpoint(resume_file, checkpoint)
        # the keys were compared before the data was read (checkpoint.read_checkpoint); the data only now
        recorded = (checkpoint.get("split") or {}).get("fingerprint")
        if recorded is not None and self.split is not None and recorded != self.split["fingerprint"]:
            raise CheckpointError(
                f"cannot resume from {resume_file}: it was trained on another split of the data (split fingerprint "
                f"{recorded}, this run's {self.split['fingerprint']}): the same split keys over other data or "
                "filters; resumed, the model could have trained on this run's held-out data"
            )
        self.best_valid_result = checkpoint.get("best_valid_result") or None
        self.history = list(checkpoint.get("history", []))
        # restored when fit() starts, so nothing drawn in between shifts the streams
        self._pending_rng = checkpoint.get("rng_state")
        return checkpoint


class CPUDistributed(AbstractTrainer):
    """RecBole's DDP wrapping of the model, which also works on the CPU (gloo).

    RecBole's ``AbstractTrainer.__init__`` wraps the model as ``DistributedDataParallel(model,
    device_ids=[local_rank])`` after converting BatchNorm to SyncBatchNorm: both only work on
    GPUs. A trainer lists this class after RecBole's ``Trainer`` in its bases, so that
    ``Trainer.__init__``'s ``super().__init__`` lands here (BetaTrainer, ``registry.plugin_trainer``).
    """

    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type == "cuda":
            super().__init__(config, model)  # RecBole's, unchanged
            return
        # mirrors recbole/trainer/trainer.py lines 58-64 without device_ids (they name a GPU) and
        # without SyncBatchNorm (CUDA only; on the CPU BatchNorm statistics stay per rank)
        self.config = config
        self.model = model
        self.distributed_model = DistributedDataParallel(model)


def _mean_over_ranks(value):
    """A 0-d tensor averaged over the DDP ranks."""
    torch.distributed.all_reduce(value)
    return value / torch.distributed.get_world_size()


class BetaTrainer(PluginTrainerMixin, Trainer, CPUDistributed):
    """RecBole's Trainer for the BetaMultVAE family, which also reports the beta used each epoch.

    The mean beta over the epoch's training rows is kept in ``history`` (recorded with the epoch, in
    ``_train_epoch``), appended to RecBole's per-epoch log line and written to TensorBoard as
    ``Beta/Train``.

    With ``enable_amp`` (RecBole's key) training runs its products under RecBole's autocast, and so
    does evaluation (RecBole evaluates outside it); on a CPU without bfloat16 instructions both stay
    float32, with one warning (:class:`PluginTrainerMixin`, as for every trainer).
    """

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        # RecBole's Adam steps with torch's tensor-by-tensor loop: about ten passes over the
        # parameters per batch (24M of them at the ML-20M shape, a tenth of a sparse epoch). torch's
        # fused kernel makes the same update in one pass, equal to float rounding. The sparse path
        # takes it; the dense path keeps RecBole's loop, bit for bit MultiVAE's.
        if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and self.model.sparse_input is not None:
            groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")}
                      for group in optimizer.param_groups]
            try:
                optimizer = type(optimizer)(groups, fused=True)
            except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not take
                pass
        return optimizer

    def __init__(self, config, model):
        super().__init__(config, model)
        if not config["single_spec"]:
            # every rank steps a feedback strategy on the KL averaged over the ranks (their batches have
            # the same size), so all follow one beta trajectory
            model.kl_reduction = _mean_over_ranks

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        calculate = loss_func or self.model.calculate_loss
        tally = {"sum": 0.0, "rows": 0}  # the epoch's beta, over its training rows

        def loss_and_beta(interaction):
            losses = calculate(interaction)
            beta, rows = self.model.batch_beta
            tally["sum"] = tally["sum"] + (beta.sum() if torch.is_tensor(beta) else beta * rows)
            tally["rows"] += rows
            return losses

        losses = super()._train_epoch(train_data, epoch_idx, loss_func=loss_and_beta, show_progress=show_progress)
        self._history_entry(epoch_idx)["beta"] = float(tally["sum"]) / tally["rows"] if tally["rows"] else None
        return losses

    def _full_sort_batch_eval(self, batched_data):
        # mirrors Trainer._full_sort_batch_eval (RecBole 1.2.1) for a model with full_sort_predict: the
        # scores from the model's ranking_scores (on the sparse path a buffer reused from batch to
        # batch, which the collector reads before the next), under autocast with enable_amp
        interaction, history_index, positive_u, positive_i = batched_data
        with torch.autocast(device_type=self.device.type, enabled=self.enable_amp):
            scores = self.model.ranking_scores(interaction.to(self.device))
        scores[:, 0] = -np.inf
        if history_index is not None:
            scores[history_index] = -np.inf
        return interaction, scores, positive_u, positive_i

    def _beta_of(self, epoch_idx):
        """The mean beta recorded for the epoch (None if it has none)."""
        entry = self.history[-1] if self.history else {}
        return entry.get("beta") if entry.get("epoch") == epoch_idx else None

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        output = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        beta = self._beta_of(epoch_idx)
        if beta is None:
            return output
        return output[:-1] + ", " + set_color("beta", "blue") + f": {beta:.6g}]"

    def _add_train_loss_to_tensorboard(self, epoch_idx, losses, tag="Loss/Train"):
        super()._add_train_loss_to_tensorboard(epoch_idx, losses, tag)
        beta = self._beta_of(epoch_idx)
        if beta is not None:
            self.tensorboard.add_scalar("Beta/Train", beta, epoch_idx)
