"""Trainers: RecBole's own, with safe checkpoints, and for the plugin's models the beta in the log."""

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_beta.compat import SafeCheckpointMixin


class BetaTrainer(SafeCheckpointMixin, Trainer):
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
