"""Many trainings, one vocabulary: the run record, one training, the worker set-up and the engines.

Sweeps (:mod:`recbole_beta.experiments`) and searches (:mod:`recbole_beta.tuning`) both run their trainings
through this package: :mod:`~recbole_beta.runs.record` (the ``RunStatus`` enum and ``RunRecord`` every run and
trial writes), :mod:`~recbole_beta.runs.training` (one training and its driver's config),
:mod:`~recbole_beta.runs.worker` (the one worker set-up), :mod:`~recbole_beta.runs.engines` (this process,
local processes, Ray tasks) and :mod:`~recbole_beta.runs.raycluster` (Ray started or joined). Import the
modules themselves: this file imports nothing, so a worker that needs only the record does not load torch.
"""
