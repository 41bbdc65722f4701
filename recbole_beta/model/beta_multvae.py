r"""BetaMultVAE: RecBole's MultiVAE with its KL weight, beta, taken from a beta strategy.

Reference:
    Dawen Liang et al. "Variational Autoencoders for Collaborative Filtering." in WWW 2018.

The strategy (:mod:`recbole_beta.beta`) may give each user a beta of its own, and change it over
training steps. On sparse data the model reads its input through the sparse path it composes
(:mod:`recbole_beta.model.sparse_input`); otherwise through RecBole's dense rows, MultiVAE's code.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.general_recommender import MultiVAE

from recbole_beta.beta import StrategyContext, build_strategy
from recbole_beta.data.heldout import training_user_ids
from recbole_beta.data.user_items import UserItemCSR
from recbole_beta.defaults import WithDefaults, model_defaults
from recbole_beta.errors import check, check_number
from recbole_beta.model.sparse_input import SparseInput, check_sparse_keys, takes_sparse_path

#: activation name (config key ``activation``) -> module placed between MLP layers
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
}


def steps_per_epoch(config, n_samples):
    """Training batches one process takes per epoch over ``n_samples`` users.

    RecBole's UserDataLoader walks every user id (the padding id 0 included); under DDP each rank
    gets ceil(n / world_size) of them in batches of train_batch_size // world_size.
    """
    batch = config["train_batch_size"]
    if config["single_spec"] is False:
        world = config["world_size"]
        n_samples, batch = math.ceil(n_samples / world), max(1, batch // world)
    return math.ceil(n_samples / batch)


class BetaMultVAE(MultiVAE):
    r"""Mult-VAE whose beta strategy, or product of strategies, is chosen in YAML (``beta_strategy``).

    The loss is the batch mean of recon_u + beta_u * KL_u, returned as the tuple
    (reconstruction, weighted KL) so RecBole's trainer logs both parts.
    """

    #: the strategy a named subclass always uses; None lets ``beta_strategy`` choose
    strategy = None

    def __init__(self, config, dataset):
        self.validate_config(config)
        settings = self.settings(config)
        # MultiVAE.__init__ builds the layers through self.mlp_layers, which reads these
        self.activation = settings["activation"]
        self.noise_std = settings["noise_std"]
        super().__init__(config, dataset)
        #: the sparse input path, or None: RecBole's dense rows (MultiVAE's own code)
        self.sparse_input = None
        if takes_sparse_path(settings["sparse_input"], self.history, settings["sparse_input_density"]):
            self.sparse_input = SparseInput(self.history, self.encoder, self.decoder, self.drop_out,
                                            settings["sparse_cpu_column_block"])

        # |x_u| of every user id, read by per-user strategies: the user's interaction rows, as
        # RecBole's history length counts them. Derived data, so not checkpointed.
        activity = self.history.counts.float()
        self.register_buffer("user_activity", activity, persistent=False)
        # every buffer is derived from the data, the same on every rank: DDP need not broadcast
        # them before each forward (it syncs every buffer, non-persistent ones included)
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]
        # what a strategy reads comes from the users trained on: every user id (the padding id 0
        # included, as RecBole's UserDataLoader walks them), or the training users alone under
        # eval_protocol=strong, whose dataset names them (recbole_beta.data.heldout)
        trained = training_user_ids(dataset)
        n_trained = dataset.user_num if trained is None else len(trained)
        trained_activity = activity if trained is None else activity[torch.as_tensor(trained, dtype=torch.long)]
        active = trained_activity[trained_activity > 0]
        context = StrategyContext(
            total_steps=config["epochs"] * steps_per_epoch(config, n_trained),
            mean_activity=active.mean().item() if len(active) else 1.0,
        )
        self.beta_strategy = self.build_beta_strategy(config, context)
        #: what the trainer may set: a function of the batch-mean KL (a 0-d tensor) before a feedback
        #: strategy steps on it (under DDP, the mean over the ranks, so all follow one trajectory)
        self.kl_reduction = None
        #: the last training batch's beta (a tensor of one per row, or one number for every row) and its
        #: number of rows: what the trainer tallies into the epoch's mean beta
        self.batch_beta = None

    @classmethod
    def settings(cls, config):
        """``config`` as the model reads it: a key it lacks, or holds as None, takes the model's
        default from ``properties/model/`` (BetaMultVAE.yaml, then the model's own file), so the
        plain dict of a sweep spec reads as a run's Config would."""
        return WithDefaults(config, model_defaults(cls))

    @classmethod
    def strategy_config(cls, config):
        """The config the strategy is built from; a named subclass checks that ``beta_strategy`` (its
        property file sets it) names the strategy it always uses."""
        config = cls.settings(config)
        if cls.strategy is not None:
            given = config["beta_strategy"]
            check(
                "beta_strategy",
                given,
                given == cls.strategy,
                f"{cls.__name__} always uses {cls.strategy!r}; choose the strategy with BetaMultVAE",
            )
        return config

    @classmethod
    def build_beta_strategy(cls, config, context):
        return build_strategy(cls.strategy_config(config), context)

    @classmethod
    def validate_config(cls, config):
        """Check every key the model reads, before any data is loaded (raises ConfigError)."""
        config = cls.settings(config)
        activation = config["activation"]
        check("activation", activation, activation in ACTIVATIONS, f"must be one of {sorted(ACTIVATIONS)}")
        check_number("noise_std", config["noise_std"], minimum=0)
        check_number("dropout_prob", config["dropout_prob"], minimum=0, maximum=1)
        check_sparse_keys(config)
        latent = config["latent_dimension"]
        check(
            "latent_dimension",
            latent,
            isinstance(latent, int) and not isinstance(latent, bool) and latent >= 2 and latent % 2 == 0,
            "must be an even integer >= 2 (the encoder's output: mu and logvar, half each)",
        )
        hidden = config["mlp_hidden_size"]
        check(
            "mlp_hidden_size",
            hidden,
            isinstance(hidden, list) and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden),
            "must be a list of positive integers, e.g. [600] or [600, 200] ([] for no hidden layer)",
        )
        cls.build_beta_strategy(config, StrategyContext())

    def mlp_layers(self, layer_dims):
        # RecBole's builder puts Tanh between layers; swap in the configured activation
        layers = super().mlp_layers(layer_dims)
        for i, module in enumerate(layers):
            if isinstance(module, nn.Tanh):
                layers[i] = ACTIVATIONS[self.activation]()
        return layers

    def reparameterize(self, mu, logvar):
        if self.training:
            std = torch.exp(0.5 * logvar)
            epsilon = torch.zeros_like(std).normal_(mean=0, std=self.noise_std)
            return mu + epsilon * std
        return mu

    def build_histroy_items(self, dataset):
        # Replaces RecBole's AutoEncoderMixin.build_histroy_items (called by MultiVAE.__init__; the
        # name is RecBole's): a CSR matrix instead of the padded id and value matrices.
        # Dataset._history_matrix, which RecBole's version calls, shuffles a copy of the
        # interactions with torch.randperm; draw the same permutation, so the layers initialised
        # next get the same random numbers as in RecBole's MultiVAE.
        torch.randperm(len(dataset.inter_feat))
        self.history = UserItemCSR.from_dataset(dataset).to(self.device)

    def get_rating_matrix(self, user):
        """RecBole's ``AutoEncoderMixin.get_rating_matrix``: the batch's dense rows (batch x n_items)."""
        return self.history.dense(user)

    def _loss_terms(self, user):
        """mu, logvar and the reconstruction term -sum_i x_ui log softmax(z_u)_i of each user."""
        if self.sparse_input is not None:
            return self.sparse_input.loss_terms(user, self.reparameterize)
        rating_matrix = self.get_rating_matrix(user)
        z, mu, logvar = self.forward(rating_matrix)
        # under autocast (enable_amp) z is bfloat16 or float16: the softmax and likelihood in float32
        return mu, logvar, -(F.log_softmax(z.float(), 1) * rating_matrix).sum(1)

    def calculate_loss(self, interaction):
        user = interaction[self.USER_ID]
        mu, logvar, recon = self._loss_terms(user)
        mu, logvar = mu.float(), logvar.float()  # the KL in float32 under autocast too (else a no-op)

        # sum over latent dims of (1 + logvar - mu^2 - var): -2 * KL_u
        neg2_kl = torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        strategy = self.beta_strategy
        kl = None
        if strategy.needs_kl:
            kl = -0.5 * neg2_kl.detach().mean()
            if self.kl_reduction is not None:
                kl = self.kl_reduction(kl)
            kl = kl.item()
        strategy.step(kl=kl)
        beta = strategy.weights(self.user_activity[user])
        if torch.is_tensor(beta):
            kl_loss = -0.5 * torch.mean(neg2_kl * beta)
            self.batch_beta = (beta.detach(), len(user))
        else:
            # the same operations, in the same order, as RecBole's MultiVAE: identical floats
            kl_loss = -0.5 * torch.mean(neg2_kl) * beta
            self.batch_beta = (beta, len(user))

        return recon.mean(), kl_loss

    def full_sort_predict(self, interaction):
        if self.sparse_input is None:
            return super().full_sort_predict(interaction)
        return self.sparse_input.scores(interaction[self.USER_ID], self.reparameterize).view(-1)

    def ranking_scores(self, interaction):
        """``full_sort_predict``'s scores as a users x items matrix, for the trainer's full ranking.
        On the sparse path they are written into one buffer reused from call to call: the next call
        overwrites them (``full_sort_predict`` returns a tensor of its own)."""
        if self.sparse_input is None:
            return super().full_sort_predict(interaction).view(len(interaction[self.USER_ID]), -1)
        return self.sparse_input.scores(interaction[self.USER_ID], self.reparameterize, reuse=True)

    def predict(self, interaction):
        if self.sparse_input is None:
            return super().predict(interaction)
        item = interaction[self.ITEM_ID]
        scores = self.sparse_input.scores(interaction[self.USER_ID], self.reparameterize)
        return scores[torch.arange(len(item), device=self.device), item]

    def other_parameter(self):
        # the strategy's state travels in checkpoints beside the weights, so a resumed run goes on
        # with the same beta trajectory
        params = super().other_parameter()
        params["beta_strategy"] = self.beta_strategy.state_dict()
        return params

    def load_other_parameter(self, para):
        if para is None:
            return
        para = dict(para)
        state = para.pop("beta_strategy", None)
        super().load_other_parameter(para)
        if state is not None:
            self.beta_strategy.load_state_dict(state)
