r"""
NCEPLRec
################################################
Reference:
    Ga Wu et al. "Noise Contrastive Estimation for One-Class Collaborative Filtering." in SIGIR 2019.

RecBole's NCEPLRec, keeping the item basis it fits, so that a user it did not train on can be scored.

RecBole 1.2.1 fits NCE-PLRec in ``__init__``: a randomized SVD of the popularity-weighted
interaction matrix gives the item basis V* (items x rank), each user's embedding is its row projected
on it (Q = R V*) and the item weights are a ridge regression of R on Q. It keeps Q and W and drops
V*, so a held-out user (``eval_protocol: strong``), who is an empty row of R at fitting time, could
only be scored from Q's zero row. This class fits the same model and keeps V* as ``item_projection``
(not a parameter: RecBole's checkpoints hold neither Q nor W either); the held-out-user protocol
projects the fold-in rows on it (:mod:`recbole_beta.fold_in`). Scores of the users it trained on are
RecBole's, to the bit.
"""

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.model.general_recommender import NCEPLRec as RecBoleNCEPLRec
from sklearn.utils.extmath import randomized_svd


class NCEPLRec(RecBoleNCEPLRec):
    r"""NCE-PLRec whose item basis V* is kept (``item_projection``) for users folded in later."""

    def __init__(self, config, dataset):
        # mirrors recbole/model/general_recommender/nceplrec.py NCEPLRec.__init__, keeping V_star
        GeneralRecommender.__init__(self, config, dataset)
        self.dummy_param = torch.nn.Parameter(torch.zeros(1))
        R = dataset.inter_matrix(form="csr").astype(np.float32)
        beta, rank, reg_weight = config["beta"], int(config["rank"]), config["reg_weight"]
        num_users, num_items = R.shape
        item_popularities = R.sum(axis=0)
        D_rows = []
        for i in range(num_users):
            row_index, col_index = R[i].nonzero()
            if len(row_index) > 0:
                values = item_popularities[:, col_index].getA1()
                values = np.maximum(np.log(num_users / np.power(values, beta)), 0)
                D_rows.append(sp.coo_matrix((values, (row_index, col_index)), shape=(1, num_items)))
            else:
                D_rows.append(sp.coo_matrix((1, num_items)))
        D = sp.vstack(D_rows)
        _, sigma, Vt = randomized_svd(D, n_components=rank, n_iter="auto", power_iteration_normalizer="QR",
                                      random_state=config["seed"])
        V_star = Vt.T @ np.diag(np.power(sigma, 1 / 2))
        Q = R @ V_star
        W = np.linalg.inv(Q.T @ Q + reg_weight * np.identity(Vt.shape[0])) @ Q.T @ R
        self.item_projection = V_star  # the one line RecBole's lacks
        self.user_embeddings = torch.from_numpy(Q).to(self.device)
        self.item_embeddings = torch.from_numpy(W).to(self.device)
