"""Trainers: RecBole's own, with safe checkpoints, and for the plugin's models the beta in the log."""

from recbole.trainer import Trainer
from recbole.trainer.trainer import AbstractTrainer
from recbole.utils import set_color
from torch.nn.parallel import DistributedDataParallel

from recbole_beta.compat import SafeCheckpointMixin


class CPUDistributed(AbstractTrainer):
    """RecBole's DDP wrapping of the model, which also works on the CPU (gloo).

    RecBole's ``AbstractTrainer.__init__`` wraps the model as ``DistributedDataParallel(model,
    device_ids=[local_rank])`` after converting BatchNorm to SyncBatchNorm: both only work on
    GPUs. A trainer lists this class after RecBole's ``Trainer`` in its bases, so that
    ``Trainer.__init__``'s ``super().__init__`` lands here (BetaTrainer, ``registry._safe``).
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


class BetaTrainer(SafeCheckpointMixin, Trainer, CPUDistributed):
    """RecBole's Trainer for the BetaMultVAE family, which also reports the beta used each epoch.

    The mean beta over the epoch's training rows is appended to RecBole's per-epoch log line,
    written to TensorBoard as ``Beta/Train`` and kept in ``history``.
    """

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.pop_mean_beta()  # start the epoch's tally afresh
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        output = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        beta = self.model.pop_mean_beta()
        self.history[-1]["beta"] = beta
        if beta is None:
            return output
        return output[:-1] + ", " + set_color("beta", "blue") + f": {beta:.6g}]"

    def _add_train_loss_to_tensorboard(self, epoch_idx, losses, tag="Loss/Train"):
        super()._add_train_loss_to_tensorboard(epoch_idx, losses, tag)
        beta = self.history[-1].get("beta") if self.history else None
        if beta is not None:
            self.tensorboard.add_scalar("Beta/Train", beta, epoch_idx)
