"""A run's status and record: the one vocabulary of every run the plugin records (a sweep's run, a search's trial).

:class:`RunStatus` is how a run ended; :class:`RunRecord` is what every record says of its run, whoever ran
it. A sweep adds the run's identity (run id, label, seed, fold, config), a search the trial's (number,
parameters, folder, checkpoint); the reports read the shared part through this module
(:func:`protocol_of` reads records written before the ``protocol`` field too).

Plain Python only: the reports import it without torch or RecBole.
"""

from dataclasses import dataclass, fields
from enum import Enum


class RunStatus(str, Enum):
    """How a run ended. A ``str``: a JSON record holds ``"ok"`` or ``"failed"``, and a status read back from
    one compares equal to its member (``record["status"] == RunStatus.OK``)."""

    OK = "ok"
    FAILED = "failed"

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)


@dataclass
class RunRecord:
    """What a record says of its run, the same for sweeps and searches: its status; if it finished, its
    results; if not, its error (``"Type: message"``) and traceback; its wall time; and ``protocol``, the
    settings its split and seeds came from, settled once from the run's final config
    (:func:`recbole_beta.runs.training.run_protocol`)."""

    status: RunStatus
    wall_seconds: float = None
    error: str = None
    traceback: str = None
    best_valid_score: float = None
    valid_score_bigger: bool = None
    best_valid_result: dict = None
    test_result: dict = None
    history: list = None
    train_seconds: float = None
    protocol: dict = None
    #: eval_protocol=strong: how many users trained, validated and tested
    protocol_users: dict = None

    @property
    def ok(self):
        return self.status == RunStatus.OK

    def to_dict(self):
        """The record's fields, the status as its string; a field without a value is left out."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.value if isinstance(value, RunStatus) else value
        return out


def is_ok(record):
    """Whether a record (a dict, as written or read back) is of a run that finished."""
    return record.get("status") == RunStatus.OK


def protocol_of(record):
    """The protocol of a recorded run: its ``protocol`` field; for a record written before that field, what
    the record tells of it (its ``eval_protocol``, its config's ``heldout_folds``, ``split_seed``, its fold and
    seed), each key only where known, ``eval_protocol`` always (the default: weak)."""
    if isinstance(record.get("protocol"), dict):
        return record["protocol"]
    config = record.get("config") or {}
    protocol = {"eval_protocol": record.get("eval_protocol") or config.get("eval_protocol") or "weak"}
    for key in ("heldout_folds", "split_seed"):
        if config.get(key) is not None:
            protocol[key] = config[key]
    if record.get("fold") is not None:
        protocol["fold"] = record["fold"]
    if record.get("seed") is not None:
        protocol["seed"] = record["seed"]
    return protocol
