"""A worker made ready for its run, one way for a local process, a Ray task and a Ray Tune trial.

:func:`set_up_worker` gives the process its torch threads (:func:`run_threads`), its working folder and
output file (:func:`isolate`), and the modules it must import before the run (:func:`import_plugins`: a
spec's ``plugins``, where a strategy or a model of your own registers itself, as it does when the study
runs in one process).
"""

import importlib
import os
import sys
from pathlib import Path

from recbole_beta.errors import RecBoleBetaError


class PluginError(RecBoleBetaError, ImportError):
    """A module a study names to import in every worker cannot be imported (one line, naming it)."""


def import_plugins(names, where="plugins"):
    """Import each module of ``names`` (dotted names), in order; a module that cannot be imported is a
    :class:`PluginError` naming it and why. Importing a module twice is a no-op, so the driver and every
    worker may call this."""
    for name in names or ():
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - any error of the user's module, named in one line
            why = " ".join(f"{type(error).__name__}: {error}".split())
            raise PluginError(f"{where}: module {name!r} cannot be imported ({why})") from None


def parse_plugins(value, where="plugins"):
    """A study's ``plugins`` (a list of module names, or None), each imported here and now (so a model or a
    strategy it registers is known to the checks that follow); returns them as a tuple. A value that is not
    such a list, or a module that cannot be imported, is a :class:`PluginError` (one line)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name for name in value):
        raise PluginError(f"{where}={value!r} is not allowed: give a list of module names (my_package.strategies)")
    import_plugins(value, where)
    return tuple(value)


def plugin_paths(names):
    """The folders ``sys.path`` found the (imported) modules ``names`` under: what a worker that does not
    inherit this process's path (a local Ray instance's) needs on its ``PYTHONPATH``."""
    paths = []
    for name in names or ():
        top = sys.modules.get(name.partition(".")[0])
        file = getattr(top, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve().parent
        if Path(file).name == "__init__.py":  # a package: the folder above it
            path = path.parent
        if str(path) not in paths:
            paths.append(str(path))
    return paths


def run_threads(jobs=1, cpus=None):
    """The torch threads of one run: on Ray, the ``cpus`` it reserves (at least 1); in local processes, the
    cores torch sees shared among the ``jobs`` that run at once (torch's default, every core in every process,
    oversubscribes them), or None where ``OMP_NUM_THREADS`` is set (torch reads it)."""
    if cpus is not None:
        return max(1, int(cpus))
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    return max(1, torch.get_num_threads() // jobs)


def isolate(folder, output=True):
    """Work in ``folder`` from now on (RecBole writes ``log/`` and ``log_tensorboard/`` into the working
    directory); with ``output``, this process's stdout and stderr (file descriptors 1 and 2: warnings, RecBole's
    console log, a traceback) go to ``folder/output.log``. For a worker process that ends with its job."""
    os.makedirs(folder, exist_ok=True)
    os.chdir(folder)
    if not output:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(os.path.join(folder, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def set_up_worker(threads=None, folder=None, output=True, plugins=()):
    """Make this process ready for a run: ``threads`` torch threads (None: as it is), ``folder`` its working
    folder (None: as it is; ``output``: its stdout and stderr into ``folder/output.log``), then the
    ``plugins`` imported (a :class:`PluginError` names one that cannot be)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if folder is not None:
        isolate(folder, output)  # an OSError (a node that cannot write there) is the run's failure
    import_plugins(plugins)


def ray_gpu_ids():
    """The GPUs Ray gave this task or trial as RecBole's ``gpu_id`` (``''``: none, the CPU). RecBole's Config
    sets ``CUDA_VISIBLE_DEVICES`` to it, so concurrent runs do not all land on GPU 0."""
    import ray

    return ",".join(str(i) for i in ray.get_gpu_ids())
