"""Ray, started or joined one way for every run that goes to it (a sweep's Ray tasks, the tuning's Ray Tune).

A failure is a :class:`RayUnavailable` (a ``ConnectionError``, one line); each caller turns it into its
own error.
"""

import os
from contextlib import contextmanager
from pathlib import Path

from recbole_beta.runs.environment import kept_environ


class RayUnavailable(ConnectionError):
    """A local Ray instance could not be started, or the cluster at an address could not be reached."""


def python_path_for_workers(paths=()):
    """Local Ray workers get this checkout on PYTHONPATH, so they import recbole_beta even uninstalled, and
    ``paths`` (the folders a study's plugins were found in: :func:`~recbole_beta.runs.worker.plugin_paths`)."""
    root = str(Path(__file__).resolve().parents[2])  # the folder holding recbole_beta/
    before = os.environ.get("PYTHONPATH")
    entries = list(dict.fromkeys([root, *paths]))
    return kept_environ(PYTHONPATH=os.pathsep.join(entries + ([before] if before else [])))


@contextmanager
def ray_session(cpus=None, address=None, paths=()):
    """Run the block with Ray initialized, and yield the ``ray`` module.

    A Ray already initialized in this process is used as it is (and left running). Otherwise: the
    cluster at ``address`` (``auto``, ``HOST:6379``) when given, else a local instance of ``cpus`` CPUs
    (None: all), ``ray.init(num_cpus=cpus, include_dashboard=False)``, its workers with ``paths`` on their
    ``PYTHONPATH`` (a cluster's nodes import what they have installed); either is shut down when the
    block ends, however it ends. Raises :class:`RayUnavailable` when Ray cannot be started or reached.
    """
    import ray  # a hard dependency (RecBole's); imported here so that importing this module costs nothing

    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address)
            else:
                with python_path_for_workers(paths):
                    ray.init(num_cpus=cpus, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise RayUnavailable(f"could not start or reach {where}: {' '.join(str(error).split())}") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
