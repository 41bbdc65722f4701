"""Per-user evaluation: each user's test metrics from RecBole's own metric classes.

Per-user evaluation: the test metrics of each user, from RecBole's own metric classes on the top-k
lists its evaluator used (``run_recbole_beta(..., per_user=True)``; the experiments' significance tests
and activity buckets rest on them)."""

import numpy as np
from recbole.evaluator import Evaluator
from recbole.evaluator.base_metric import TopkMetric


class RecordingEvaluator(Evaluator):
    """RecBole's Evaluator that keeps the last data it evaluated (the users' top-k hit lists)."""

    last_struct = None

    def evaluate(self, dataobject):
        self.last_struct = dataobject
        return super().evaluate(dataobject)


def training_activity(train_dataset):
    """|x_u| for every user id: the user's interactions in the training split."""
    users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    return np.bincount(users, minlength=train_dataset.user_num)


def per_user_metrics(evaluator, eval_data, activity):
    """One row per evaluated user: ``user_id``, ``activity`` and every top-k metric at every k.

    Each value is what RecBole's metric class computes for that user before it averages over
    users, so the column means are RecBole's reported metrics (before its rounding).
    """
    struct = evaluator.last_struct
    if struct is None:
        raise RuntimeError("the evaluator has evaluated nothing yet")
    users = eval_data.uid_list.numpy()
    table = {"user_id": users, "activity": activity[users]}
    for name, metric in evaluator.metric_class.items():
        if not isinstance(metric, TopkMetric):
            continue
        pos_index, pos_len = metric.used_info(struct)
        try:
            values = metric.metric_info(pos_index, pos_len)
        except TypeError:  # Hit and MRR take the hit matrix alone
            values = metric.metric_info(pos_index)
        if len(values) != len(users):
            raise RuntimeError(f"{len(values)} rows of {name} for {len(users)} users")
        for k in metric.topk:
            table[f"{name}@{k}"] = values[:, k - 1].astype(float)
    return table
