"""The RecBole models the held-out-user protocol runs: how each is fitted on training users and folds a user in.

Under ``eval_protocol: strong`` (:mod:`recbole_beta.data.heldout`) a model learns from training users only
and scores a held-out user from its fold-in rows alone. What that takes depends on the model, and is
declared here, once, in :data:`FOLD_IN`; the data layer knows no model:

- a model RecBole trains on user rows (its autoencoders: RecBole's ``UserDataLoader``) is built on the
  dataset of training rows plus the held-out users' fold-in rows, and only training users form
  batches; it reads a held-out user's row from that dataset when it scores it. Nothing to attach.
- any other model is built on the training users' rows alone (the same id space: a held-out user is an
  empty row there), so whatever it fits in ``__init__`` or learns in training sees no held-out
  interaction; its ``attach`` then gives it the fold-in rows (``seen``: training rows and fold-in rows)
  to score from, recomputing what RecBole derived from the training rows for scoring, never what it fitted.

Adding a RecBole model to the protocol is one :class:`FoldIn` entry here (and its property file when the
plugin sets keys of its own): what it learns, the ``attach`` step if it has one, and the config values
the protocol cannot run.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import csr_matrix

from recbole_beta.errors import ConfigError, check_number


@dataclass(frozen=True)
class FoldIn:
    """How ``eval_protocol: strong`` runs one RecBole model."""

    #: what it learns from the training users (one line, for the docs and the refusals)
    learns: str
    #: ``attach(model, seen)``, after construction on the training users' rows: what it scores a user from
    attach: object = None
    #: ``{key: (ok(value, config) -> bool, "why the protocol cannot run another value")}``, checked before data is read
    refuses: dict = field(default_factory=dict)
    #: ``{key: check(key, value)}``: the model's own keys the protocol relies on (raises ConfigError)
    keys: dict = field(default_factory=dict)


def interaction_matrix(seen):
    """The rows a matrix model scores users from: training users' and held-out users' fold-in rows."""
    return seen.inter_matrix(form="csr").astype(np.float32)


def _matrix(model, seen):
    """EASE, SLIMElastic, ADMMSLIM: ``full_sort_predict`` is ``interaction_matrix[user] @ B``, B fitted."""
    model.interaction_matrix = interaction_matrix(seen)


def _item_knn(model, seen):
    # mirrors ItemKNN.__init__ (knn_method item): pred_mat = X @ w, with the fold-in rows in X
    model.interaction_matrix = interaction_matrix(seen)
    model.pred_mat = model.interaction_matrix.dot(model.w).tolil()


def _asym_knn(model, seen):
    # mirrors AsymKNN.__init__ (knn_method item): the scores of X @ w normalised by the user's row norm and
    # the neighbour weights' norm, to the power q
    x = model.interaction_matrix = interaction_matrix(seen)
    nominator = x.dot(model.w)
    factor1 = np.power(np.sqrt(x.power(2).sum(axis=1)), 2 * model.beta)
    factor2 = np.power(np.sqrt(model.w.power(2).sum(axis=1)), 2 * (1 - model.beta))
    model.pred_mat = csr_matrix(nominator / (factor1.dot(factor2.T) + 1e-6)).tolil().power(model.q)


def _history(model, seen):
    """FISM, NAIS: a user is the (attention-weighted) sum of its history items' embeddings."""
    model.history_item_matrix, model.history_lens, model.mask_mat = model.get_history_info(seen)


def _projection(model, seen):
    """NCEPLRec: a user's embedding is its row projected on the items' fitted basis (``item_projection``)."""
    rows = interaction_matrix(seen)
    model.user_embeddings = torch.from_numpy(rows @ model.item_projection).to(model.device)


def _positive(key, value):
    return check_number(key, value, minimum=0, min_open=True)


def _non_negative(key, value):
    return check_number(key, value, minimum=0)


def _count(key, value):
    return check_number(key, value, minimum=1, integer=True)


def _share(key, value):
    return check_number(key, value, minimum=0, maximum=1)


_ITEM_KNN = {"knn_method": (lambda v, c: v == "item", "a user-user similarity has no row for a held-out user; "
                                                      "use knn_method=item")}

#: RecBole model name -> how the protocol runs it (the plugin's own models run it by construction)
FOLD_IN = {
    # trained on user rows: built on training rows + fold-in rows, batches of training users only
    "MultiVAE": FoldIn("encoder and decoder weights"),
    "MultiDAE": FoldIn("encoder and decoder weights"),
    "RecVAE": FoldIn("encoder and decoder weights, the composite prior"),
    "MacridVAE": FoldIn("encoder weights, item and facet embeddings", keys={"kfac": _count}),
    "RaCT": FoldIn("the actor (a Mult-VAE)", keys={"pretrain_epochs": _count, "save_step": _count}, refuses={
        "train_stage": (lambda v, c: v == "actor_pretrain",
                        "the critic stages load the actor with torch.load, which torch >= 2.6 refuses for RecBole's "
                        "files; use train_stage=actor_pretrain")}),  # save_step: properties/checks.yaml
    "DiffRec": FoldIn("the denoiser's weights", keys={"steps": _count}, refuses={"time-aware": (
        lambda v, c: not v,
        "time-aware weights need each held-out user's timestamps in its fold-in; use time-aware=False")}),
    "LDiffRec": FoldIn("the autoencoder's and the denoiser's weights", keys={"steps": _count}, refuses={"n_cate": (
        lambda v, c: v == 1,
        "n_cate > 1 clusters items from item_emb.npy, trained outside the protocol; use n_cate=1")}),
    # built on the training users' rows alone, then given the fold-in rows
    "EASE": FoldIn("the item-item weights B (closed form)", _matrix, keys={"reg_weight": _positive}),
    "SLIMElastic": FoldIn("the item-item weights (one elastic net per item)", _matrix,
                          keys={"alpha": _positive, "l1_ratio": _share}),
    "ADMMSLIM": FoldIn("the item-item weights (ADMM)", _matrix,
                       keys={"lambda1": _non_negative, "lambda2": _non_negative, "rho": _positive, "k": _count},
                       refuses={"center_columns": (lambda v, c: not v, "centring counts each held-out user's empty "
                                                   "training row as minus the item means; use center_columns=False")}),
    "ItemKNN": FoldIn("the item-item similarity (top k)", _item_knn, keys={"k": _count}, refuses=_ITEM_KNN),
    "AsymKNN": FoldIn("the asymmetric item-item similarity (top k)", _asym_knn, keys={"k": _count, "q": _count},
                      refuses=_ITEM_KNN),
    "NCEPLRec": FoldIn("the item basis (SVD) and the item weights W", _projection,
                       keys={"rank": _count, "reg_weight": _non_negative}),
    "FISM": FoldIn("item embeddings and biases (a user: its history's embeddings)", _history,
                   keys={"embedding_size": _count}),
    "NAIS": FoldIn("item embeddings, biases and the attention network", _history, keys={"embedding_size": _count},
                   refuses={"pretrain_path": (lambda v, c: not v, "a pretrained FISM is loaded with torch.load, which "
                                              "torch >= 2.6 refuses, and was trained outside the protocol; unset it")}),
    "Pop": FoldIn("each item's count of training interactions"),
    "Random": FoldIn("nothing"),
}

#: RecBole's models with a parameter per user (an embedding, a graph node, an input weight): they cannot
#: score a user they were not trained on
PER_USER = ("BPR", "NeuMF", "ConvNCF", "NNCF", "LINE", "ENMF", "CDAE", "SimpleX", "DMF", "LightGCN", "NGCF", "DGCF",
            "GCMC", "SpectralCF", "SGL", "NCL")


def check_fold_in_config(name, config):
    """Refuse (ConfigError, one line) a value of the model's keys the protocol cannot run."""
    entry = FOLD_IN[name]
    for key, check in entry.keys.items():
        check(key, config[key])
    for key, (ok, why) in entry.refuses.items():
        value = config[key]
        if not ok(value, config):
            raise ConfigError(key, value, f"{name} under eval_protocol=strong: {why}")


def attach_fold_in(model, seen):
    """Give a model fitted on training users the fold-in rows (``seen``) it scores held-out users from."""
    entry = FOLD_IN.get(type(model).__name__)
    if entry is not None and entry.attach is not None:
        entry.attach(model, seen)
    return model
