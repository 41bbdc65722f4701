"""Metrics RecBole lacks, registered so that ``metrics: [...]`` in a config names them like its own.

RecBole collects its metric classes once, from ``recbole.evaluator.metrics``, into dicts that its
Config (name check), Register (what to collect) and Evaluator (the classes) read. Adding a class
to those dicts in place is all it takes: nothing of RecBole is re-typed.

Importing this module registers nothing: :func:`register_metrics` does, explicitly. The plugin's
``Config`` calls it as it is built, and so does whatever reads RecBole's registry without a Config
(a sweep spec's margin check, the report's metric names).
"""

import numpy as np
from recbole.evaluator import register
from recbole.evaluator.base_metric import TopkMetric


class TruncatedRecall(TopkMetric):
    r"""Recall@K as Liang et al. (WWW 2018) report it: hits in the top K over min(K, |R(u)|).

    .. math::
        \mathrm{TruncatedRecall@K} = \frac{1}{|U|} \sum_{u \in U}
        \frac{|\hat{R}_K(u) \cap R(u)|}{\min(K, |R(u)|)}

    RecBole's ``Recall`` divides by |R(u)|, so a user with more than K targets can never reach 1
    there; here every user can. The two agree for users with at most K targets.
    """

    def calculate_metric(self, dataobject):
        pos_index, pos_len = self.used_info(dataobject)
        return self.topk_result("truncatedrecall", self.metric_info(pos_index, pos_len))

    def metric_info(self, pos_index, pos_len):
        hits = np.cumsum(pos_index, axis=1)
        k = np.arange(1, pos_index.shape[1] + 1)
        return hits / np.minimum(pos_len.reshape(-1, 1), k)


#: the plugin's metric classes, by the lower-case name RecBole looks them up with
METRICS = {cls.__name__.lower(): cls for cls in (TruncatedRecall,)}


def register_metrics():
    """Make the plugin's metrics known to RecBole's registry (``recbole.evaluator.register``); calling it
    again changes nothing."""
    for name, cls in METRICS.items():
        register.metrics_dict[name] = cls
        register.metric_information[name] = cls.metric_need
        register.metric_types[name] = cls.metric_type
        if cls.smaller and name not in register.smaller_metrics:
            register.smaller_metrics.append(name)

