"""Ray for the studies that spread their runs over it (the tuning's Ray Tune engine, the experiments'
sweeps): one way to start a local instance or join a cluster.

It sits in the base layer, beside ``files`` and ``errors``: it imports nothing of the plugin, so that
``tuning`` and ``experiments``, which must not import each other, can both use it. A failure is a
:class:`RayUnavailable` (a ``ConnectionError``, one line); each caller turns it into its own error.
"""

import os
from contextlib import contextmanager
from pathlib import Path


class RayUnavailable(ConnectionError):
    """A local Ray instance could not be started, or the cluster at an address could not be reached."""


@contextmanager
def python_path_for_workers():
    """Local Ray workers get this checkout on PYTHONPATH, so they import recbole_beta even uninstalled."""
    root = str(Path(__file__).resolve().parents[1])  # the folder holding recbole_beta/
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([before] if before else []))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


@contextmanager
def ray_session(cpus=None, address=None):
    """Run the block with Ray initialized, and yield the ``ray`` module.

    A Ray already initialized in this process is used as it is (and left running). Otherwise: the
    cluster at ``address`` (``auto``, ``HOST:6379``) when given, else a local instance of ``cpus`` CPUs
    (None: all), ``ray.init(num_cpus=cpus, include_dashboard=False)``; either is shut down when the
    block ends, however it ends. Raises :class:`RayUnavailable` when Ray cannot be started or reached.
    """
    import ray  # a hard dependency (RecBole's); imported here so that importing this module costs nothing

    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address)
            else:
                with python_path_for_workers():
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
