"""The engines that run many trainings (this process, local processes, Ray) and their options.

The options are checked once (:meth:`Engine.checked`) for sweeps and searches alike.

A :class:`Job` is one training and its record. An engine's ``run(jobs, ended, started=None)`` runs jobs and
tells the driver as each ends (``ended(job, record)``) and, where it knows, as each starts
(``started(job)``); the record is the job's, whatever the engine:

- :class:`InProcess`: one after another in this process (a sweep's default; a hyperopt search, whose
  next point depends on the last, runs each trial this way).
- :class:`LocalProcesses` (``jobs``): at most ``jobs`` at a time, each in a fresh process (spawn:
  RecBole's logging and seeding are per process, and a run's memory goes with it) with ``cores / jobs``
  torch threads (torch's default, every core in every process, oversubscribes them) unless
  ``OMP_NUM_THREADS`` is set. A worker whose driver dies exits.
- :class:`RayTasks`: one Ray task per job (``max_calls=1``: a fresh worker process each;
  ``max_retries=0``: a job that dies is recorded as failed), reserving ``cpus_per_run`` CPUs (also its
  torch threads) and ``gpus_per_run`` GPUs; the job is given the GPUs Ray assigned as RecBole's
  ``gpu_id`` (none: the CPU), as a Ray Tune trial is (RecBole's Config sets ``CUDA_VISIBLE_DEVICES`` to it).

Off this process a job is set up by :func:`~recbole_beta.runs.worker.set_up_worker`, the same for a local
process, a Ray task and a Ray Tune trial: its torch threads, its own folder (RecBole writes ``log/`` and
``log_tensorboard/`` into the working directory; the process's stdout and stderr go to ``output.log``
there, so the driver's console keeps its progress bar), and its study's plugins imported (:attr:`Job.plugins`).
The driver writes a record itself only for what a worker could not: a process that died without one, a Ray
task that did not come back (:meth:`Job.lost`), and a record a Ray task returned from a node that does not
share the folder (:meth:`Job.returned`).

Why not ``concurrent.futures.ProcessPoolExecutor`` for the local processes: a worker that dies (the OOM
killer) breaks the whole pool, which then terminates the other workers, so their runs would be lost too;
it does not say which job's process died or with which signal (the failed record names it); it has no way
to stop the jobs still running when the driver is interrupted short of its private attributes (until
Python 3.14); and one fresh process per job (``max_tasks_per_child``) needs Python 3.11. A
``multiprocessing`` process per job, waited on with ``multiprocessing.connection.wait``, does all of it.
"""

import multiprocessing
import os
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

from recbole_beta.errors import RecBoleBetaError, is_number
from recbole_beta.runs.worker import isolate, plugin_paths, ray_gpu_ids, run_threads, set_up_worker

__all__ = ["ENGINES", "Engine", "EngineError", "InProcess", "Job", "LocalProcesses", "RayTasks", "isolate"]

ENGINES = ("local", "ray")


class EngineError(RecBoleBetaError, ValueError):
    """Options of an engine that cannot work (together); the message is one line."""


class Job:
    """One training for an engine: what running it means and where its record goes. Picklable (it travels
    to the worker)."""

    #: names the job in messages and its worker's folder
    key = "job"
    #: the folder it works in off the driver's process (None: the working directory)
    folder = None
    #: modules its worker imports before it runs (a study's ``plugins``: strategies and models of your own)
    plugins = ()

    def work(self, gpu_id=None, driver_writes=False):
        """Run it (in the worker) and write its record; return what the driver gets back (on Ray). ``gpu_id``:
        the GPUs Ray assigned. ``driver_writes``: the driver writes what is returned too (Ray: another node
        may not share the folder), so a file that cannot be written here is no reason to lose the run."""
        raise NotImplementedError

    def stamp(self):
        """Driver, before a worker process starts: what is at the record's place now."""
        return None

    def written(self, stamp):
        """Driver, after the worker process ended: the record it wrote since ``stamp``, or None."""
        return None

    def returned(self, value):
        """Driver: what :meth:`work` returned on Ray; write it here if this node does not see it; return the record."""
        return value

    def lost(self, error, details=""):
        """Driver: the record of a job whose worker ended without one (written by the driver)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Engine:
    """Where jobs run: ``engine`` local (``jobs`` processes; 1: this process) or ray."""

    engine: str = "local"
    jobs: int = 1
    cpus: int = None  # ray: CPUs of the local instance started for the study (None: all)
    address: str = None  # ray: an existing cluster instead (auto, HOST:6379)
    cpus_per_run: float = 1  # ray: what each job reserves
    gpus_per_run: float = 0

    @classmethod
    def checked(cls, engine="local", jobs=1, cpus=None, address=None, cpus_per_run=None, gpus_per_run=None,
                unit="run"):
        """The options, checked before anything runs (:class:`EngineError`); ``unit`` names a job in the
        per-job options (``--cpus_per_run``, or ``--cpus_per_trial`` for a search)."""
        per_cpus, per_gpus = f"cpus_per_{unit}", f"gpus_per_{unit}"
        if engine not in ENGINES:
            raise EngineError(f"engine={engine!r} is not allowed: must be one of {', '.join(ENGINES)}")
        for key, value, minimum, integer in (("jobs", jobs, 1, True), ("cpus", cpus, 1, True),
                                             (per_cpus, cpus_per_run, 0, False), (per_gpus, gpus_per_run, 0, False)):
            if value is None:
                continue
            if not is_number(value) or value < minimum or (integer and not float(value).is_integer()):
                raise EngineError(f"{key}={value!r} is not allowed: must be {'an integer' if integer else 'a number'} "
                                  f">= {minimum}")
        if cpus_per_run is not None and cpus_per_run <= 0:
            raise EngineError(f"{per_cpus}={cpus_per_run!r} is not allowed: must be a number > 0")
        if engine == "local":
            given = [f"--{name}" for name, value in (("cpus", cpus), ("ray_address", address),
                                                     (per_cpus, cpus_per_run), (per_gpus, gpus_per_run))
                     if value is not None]
            if given:
                raise EngineError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --engine ray")
        else:
            if jobs != 1:
                raise EngineError(f"--jobs is for local processes; on Ray, --{per_cpus} and --{per_gpus} decide "
                                  f"how many {unit}s share a machine")
            if cpus is not None and address:
                raise EngineError("--cpus starts a local Ray instance; a cluster at --ray_address has its own CPUs")
        return cls(engine=engine, jobs=int(jobs), cpus=None if cpus is None else int(cpus), address=address or None,
                   cpus_per_run=1 if cpus_per_run is None else cpus_per_run,
                   gpus_per_run=0 if gpus_per_run is None else gpus_per_run)

    def runner(self):
        """The engine that runs jobs as these options say."""
        if self.engine == "ray":
            return RayTasks(self)
        return InProcess() if self.jobs == 1 else LocalProcesses(self.jobs)


class InProcess:
    """One job after another in this process."""

    def run(self, jobs, ended, started=None):
        for job in jobs:
            if started:
                started(job)
            ended(job, job.work())


# --------------------------------------------------------------------------------------------------
# local processes


def _exit_with_parent():
    """Exit this process (at once) when the driver that started it dies, whatever it is doing."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(70)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def _process_main(job, threads):
    """A local worker process: one job. Exits 0 once its record is written (else with an error: the driver
    records the job as failed)."""
    _exit_with_parent()
    set_up_worker(threads, job.folder, plugins=job.plugins)
    job.work()


class LocalProcesses:
    """At most ``jobs`` jobs at a time, each in a fresh local process."""

    def __init__(self, jobs):
        self.jobs = jobs

    def run(self, jobs, ended, started=None):
        context = multiprocessing.get_context("spawn")
        threads = run_threads(jobs=self.jobs)
        queue, running = deque(jobs), {}  # sentinel -> (process, job, the record's stamp before it started)
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    job = queue.popleft()
                    process = context.Process(target=_process_main, name=f"recbole-beta {job.key}", args=(job, threads))
                    before = job.stamp()  # a record there now is an earlier study's
                    process.start()
                    if started:
                        started(job)
                    running[process.sentinel] = (process, job, before)
                for sentinel in wait(list(running)):
                    process, job, before = running.pop(sentinel)
                    process.join()
                    record = job.written(before)  # even if it was killed after writing it
                    if record is None:
                        code = process.exitcode
                        output = os.path.join(job.folder, "output.log") if job.folder else "its output"
                        why = (f"signal {-code} (killed; out of memory?)" if code < 0
                               else f"exit code {code} (see {output})")
                        record = job.lost(f"WorkerDied: the run's process ended before writing its record, with {why}")
                    ended(job, record)
        finally:
            for process, *_ in running.values():  # interrupted: stop the jobs still going (the processes we started)
                process.terminate()
            for process, *_ in running.values():
                process.join()


# --------------------------------------------------------------------------------------------------
# ray


def _ray_task(job, cpus_per_run):
    """A Ray task: one job, on the GPUs Ray gave it (none: the CPU). An error in setting it up (a node that
    cannot write the folder, a plugin it cannot import) comes back: the driver records it."""
    set_up_worker(run_threads(cpus=cpus_per_run), job.folder, plugins=job.plugins)
    return job.work(gpu_id=ray_gpu_ids(), driver_writes=True)


class RayTasks:
    """One Ray task per job, on a local instance or a cluster (:func:`~recbole_beta.runs.raycluster.ray_session`)."""

    def __init__(self, options):
        self.options = options

    def run(self, jobs, ended, started=None):  # Ray starts a task when resources free up: not seen here
        from recbole_beta.runs.raycluster import RayUnavailable, ray_session

        jobs = list(jobs)
        try:
            paths = plugin_paths(dict.fromkeys(name for job in jobs for name in job.plugins))
            with ray_session(self.options.cpus, self.options.address, paths) as ray:
                self._submit_and_wait(ray, jobs, ended)
        except RayUnavailable as error:  # raised only in starting or reaching Ray
            raise EngineError(str(error)) from None

    def _submit_and_wait(self, ray, jobs, ended):
        options = self.options
        task = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_calls=1,
                          max_retries=0)(_ray_task)
        # Ray queues what does not fit now, and runs it as resources free up
        pending = {task.remote(job, options.cpus_per_run): job for job in jobs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the task's worker died, or the task could not run
                        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                        record = job.lost(f"{type(error).__name__}: {lines[-1] if lines else 'the Ray task failed'}",
                                          str(error))
                    else:
                        record = job.returned(value)
                    ended(job, record)
        finally:
            for ref in pending:  # interrupted: stop the jobs still queued or going
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already ended, or Ray is going down
                    pass
