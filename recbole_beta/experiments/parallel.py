"""A sweep's runs several at once: ``jobs`` local processes, or Ray tasks on a local instance or a cluster.

Each run goes through :func:`run_in_worker`, in a process of its own (a fresh one per run: RecBole's
logging and seeding are per process, and a run's memory, GPU memory included, goes with it). It works in
a folder of its own, ``<out>/work/<run_id>/`` (RecBole writes ``log/`` and ``log_tensorboard/`` into the
working directory; the process's own stdout and stderr go to ``output.log`` there, so that the driver's
console keeps its progress bar), gives RecBole no command line (``run_recbole_beta``'s ``argv`` is
empty), and writes the run's per-user table and then its record, each atomically, the moment the run
ends, as the sequential sweep does. So a driver that is killed loses no finished run, and a rerun skips
them.

The driver hands runs out, counts them on the progress bar as they finish and reports failures. It writes
a record itself only for what a worker could not: a process that died without one (killed, out of
memory), a Ray task that did not come back, and on a cluster whose nodes do not share ``--out`` the
record the task returned (the driver does not see the file the worker wrote on its own node).

- ``jobs`` (engine ``local``): ``multiprocessing`` processes with the spawn start method, at most
  ``jobs`` at a time, each with ``cores / jobs`` torch threads (torch's default, every core in every
  process, oversubscribes them) unless ``OMP_NUM_THREADS`` is set. A worker whose driver dies exits.
- ``ray``: one task per run (``max_calls=1``: a fresh worker process each; ``max_retries=0``: a run that
  dies is recorded as failed and retried by the next sweep, like any failed run), reserving
  ``cpus_per_run`` CPUs (also its torch threads) and ``gpus_per_run`` GPUs. RecBole's Config sets
  ``CUDA_VISIBLE_DEVICES`` to its ``gpu_id``, so each task sets ``gpu_id`` to the GPUs Ray gave it (none:
  the CPU), as the tuning's Ray engine does. Ray is started as the tuning starts it
  (:func:`recbole_beta.raycluster.ray_session`).

Paths travel absolute: ``--out``, the spec's config files, and a relative ``data_path`` (made absolute
against the driver's working directory, as RecBole would have read it there).
"""

import json
import multiprocessing
import os
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from pathlib import Path

from recbole_beta.errors import RecBoleBetaError, is_number
from recbole_beta.experiments.records import execute, new_record, run_paths, write_run
from recbole_beta.files import plain

ENGINES = ("local", "ray")


class EngineError(RecBoleBetaError, ValueError):
    """Options of a sweep's engine that cannot work (together); the message is one line."""


@dataclass(frozen=True)
class Workers:
    """Where a sweep's runs go: ``engine`` local (``jobs`` processes; 1: the sequential sweep) or ray."""

    engine: str = "local"
    jobs: int = 1
    cpus: int = None  # ray: CPUs of the local instance started for the sweep (None: all)
    address: str = None  # ray: an existing cluster instead (auto, HOST:6379)
    cpus_per_run: float = 1  # ray: what each run reserves
    gpus_per_run: float = 0

    @property
    def sequential(self):
        return self.engine == "local" and self.jobs == 1

    @classmethod
    def checked(cls, engine="local", jobs=1, cpus=None, address=None, cpus_per_run=None, gpus_per_run=None):
        """The options, checked before anything runs (:class:`EngineError`)."""
        if engine not in ENGINES:
            raise EngineError(f"engine={engine!r} is not allowed: must be one of {', '.join(ENGINES)}")
        for key, value, minimum, integer in (("jobs", jobs, 1, True), ("cpus", cpus, 1, True),
                                             ("cpus_per_run", cpus_per_run, 0, False),
                                             ("gpus_per_run", gpus_per_run, 0, False)):
            if value is None:
                continue
            if not is_number(value) or value < minimum or (integer and not float(value).is_integer()):
                raise EngineError(f"{key}={value!r} is not allowed: must be {'an integer' if integer else 'a number'} "
                                  f">= {minimum}")
        if cpus_per_run is not None and cpus_per_run <= 0:
            raise EngineError(f"cpus_per_run={cpus_per_run!r} is not allowed: must be a number > 0")
        if engine == "local":
            given = [f"--{name}" for name, value in (("cpus", cpus), ("ray_address", address),
                                                     ("cpus_per_run", cpus_per_run), ("gpus_per_run", gpus_per_run))
                     if value is not None]
            if given:
                raise EngineError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --engine ray")
        else:
            if jobs != 1:
                raise EngineError("--jobs is for local processes; on Ray, --cpus_per_run and --gpus_per_run decide "
                                  "how many runs share a machine")
            if cpus is not None and address:
                raise EngineError("--cpus starts a local Ray instance; a cluster at --ray_address has its own CPUs")
        return cls(engine=engine, jobs=int(jobs), cpus=None if cpus is None else int(cpus), address=address or None,
                   cpus_per_run=1 if cpus_per_run is None else cpus_per_run,
                   gpus_per_run=0 if gpus_per_run is None else gpus_per_run)

    def run(self, todo, spec, out_dir, bar, console_level=None):
        """Run ``todo`` ([(index, run)]), updating ``bar`` as each ends; return the number that failed.
        ``console_level``: of each run's RecBole console log (the driver's choice)."""
        out_dir = Path(out_dir).resolve()
        spec, overrides = portable(spec, [run for _, run in todo])
        progress = _Progress(bar)
        if self.engine == "ray":
            _run_on_ray(self, todo, spec, out_dir, overrides, progress, console_level)
        else:
            _run_in_processes(self.jobs, todo, spec, out_dir, overrides, progress, console_level)
        return progress.failed


# --------------------------------------------------------------------------------------------------
# What a worker does, on either engine


def run_in_worker(run, spec, out_dir, index, overrides=None, console_level=None, driver_writes=False,
                  capture_output=False):
    """Run one run in its own folder and write its files; return (record, per-user table).

    ``driver_writes``: the driver also gets the return value and writes it where it cannot see this
    worker's files (Ray), so a folder this node cannot write is no reason to lose the run.
    ``capture_output``: this process's stdout and stderr (file descriptors 1 and 2: warnings, RecBole's
    console log, a traceback) go to ``output.log`` in the run's folder, not to the driver's console, where
    the progress bar is; for a worker process that ends with its run."""
    try:
        work = Path(out_dir) / "work" / run.run_id
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory
        if capture_output:
            _output_to(work / "output.log")
    except OSError as error:
        if not driver_writes:
            raise
        record = new_record(run, spec, out_dir, index, overrides)
        record.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc(),
                      wall_seconds=0.0)
        return record, None
    record, per_user = execute(run, spec, out_dir, index, overrides, console_level)
    try:
        write_run(out_dir, run, record, per_user)
    except OSError:
        if not driver_writes:
            raise
    return record, per_user


def _output_to(path):
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def portable(spec, runs):
    """The spec with its config files as absolute paths, and each run's config overrides
    ({run_id: {"data_path": ...}}) for a relative data path, made absolute against this working directory
    as RecBole would have read it here (ml-100k needs none: RecBole reads the copy it ships)."""
    spec = replace(spec, config_files=[os.path.abspath(f) for f in spec.config_files])
    overrides, seen = {}, {}
    for run in runs:
        overrides[run.run_id] = {}
        if spec.dataset == "ml-100k":
            continue
        key = json.dumps([run.model, run.config], sort_keys=True, default=str)
        if key not in seen:
            seen[key] = _data_path(spec, run)
        if seen[key] is not None:
            overrides[run.run_id] = {"data_path": seen[key]}
    return spec, overrides


def _data_path(spec, run):
    from recbole_beta.config import Config

    before = os.environ.get("CUDA_VISIBLE_DEVICES")  # RecBole's Config sets it; a local Ray would inherit it
    try:
        config = Config(model=run.model, dataset=spec.dataset, config_file_list=spec.config_files or None,
                        config_dict=dict(run.config), argv=[])
    except Exception:  # noqa: BLE001 - the run fails with this error in its worker, and is recorded
        return None
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
    path = config["data_path"]  # RecBole's: the configured data_path joined with the dataset's name
    return None if os.path.isabs(path) else os.path.abspath(os.path.dirname(os.path.normpath(path)))


class _Progress:
    """The driver's side: the bar (a run counted as it ends), the failures."""

    def __init__(self, bar):
        self.bar, self.failed = bar, 0

    def ended(self, run, record):
        if record["status"] != "ok":
            self.failed += 1
            self.bar.write(f"run {run.run_id} failed: {record['error'].splitlines()[0]}")
            self.bar.set_postfix_str(f"{self.failed} failed", refresh=False)
        self.bar.update(1)


def _driver_failure(run, spec, out_dir, index, overrides, error, details=""):
    """The record of a run whose worker came back without one; written by the driver."""
    record = new_record(run, spec, out_dir, index, overrides)
    record.update(status="failed", error=error, traceback=details, wall_seconds=None)
    write_run(out_dir, run, record, None)
    return record


# --------------------------------------------------------------------------------------------------
# jobs: local processes


def _exit_with_parent():
    """Exit this process (at once) when the driver that started it dies, whatever it is doing."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(70)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def _process_main(run, spec, out_dir, index, overrides, console_level, threads):
    """A local worker process: one run. Exits 0 once its record is written (else with an error: the
    driver records the run as failed)."""
    _exit_with_parent()
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_in_worker(run, spec, out_dir, index, overrides, console_level, capture_output=True)


def _threads_per_process(jobs):
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # torch reads it
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _run_in_processes(jobs, todo, spec, out_dir, overrides, progress, console_level):
    context = multiprocessing.get_context("spawn")
    threads = _threads_per_process(jobs)
    queue, running = deque(todo), {}  # sentinel -> (process, index, run, the record path's stamp)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                index, run = queue.popleft()
                process = context.Process(
                    target=_process_main, name=f"recbole-beta run {run.run_id}",
                    args=(run, spec, str(out_dir), index, overrides[run.run_id], console_level, threads))
                before = _stamp(out_dir, run)  # a record there now is an earlier sweep's
                process.start()
                running[process.sentinel] = (process, index, run, before)
            for sentinel in wait(list(running)):
                process, index, run, before = running.pop(sentinel)
                process.join()
                # the worker's record, if it wrote one (even if it was killed after that)
                record = _record_of(out_dir, run) if _stamp(out_dir, run) != before else None
                if record is None:
                    code = process.exitcode
                    why = (f"signal {-code} (killed; out of memory?)" if code < 0
                           else f"exit code {code} (see {out_dir / 'work' / run.run_id / 'output.log'})")
                    record = _driver_failure(run, spec, out_dir, index, overrides[run.run_id],
                                             f"WorkerDied: the run's process ended before writing its record, "
                                             f"with {why}")
                progress.ended(run, record)
    finally:
        for process, *_ in running.values():  # interrupted: stop the runs still going (the processes we started)
            process.terminate()
        for process, *_ in running.values():
            process.join()


def _stamp(out_dir, run):
    """Which file is at the run's record path now (an atomic write puts a new one there), or None."""
    try:
        stat = run_paths(out_dir, run)[0].stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _record_of(out_dir, run):
    record_path, _ = run_paths(out_dir, run)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("run_id") == run.run_id else None


# --------------------------------------------------------------------------------------------------
# ray


def _ray_task(run, spec, out_dir, index, overrides, console_level, cpus_per_run):
    """A Ray task: one run, on the GPUs Ray gave it (none: the CPU)."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(cpus_per_run)))
    overrides = {**overrides, "gpu_id": ",".join(str(i) for i in ray.get_gpu_ids())}
    return run_in_worker(run, spec, out_dir, index, overrides, console_level, driver_writes=True, capture_output=True)


def _same_on_disk(out_dir, run, record):
    """Whether the record the driver sees at the run's path is ``record`` (the worker wrote it here)."""
    on_disk = _record_of(out_dir, run)
    return on_disk is not None and on_disk == json.loads(json.dumps(plain(record)))


def _run_on_ray(workers, todo, spec, out_dir, overrides, progress, console_level):
    from recbole_beta.raycluster import RayUnavailable, ray_session

    try:
        with ray_session(workers.cpus, workers.address) as ray:
            _submit_and_wait(ray, workers, todo, spec, out_dir, overrides, progress, console_level)
    except RayUnavailable as error:  # raised only in starting or reaching Ray
        raise EngineError(str(error)) from None


def _submit_and_wait(ray, workers, todo, spec, out_dir, overrides, progress, console_level):
    task = ray.remote(num_cpus=workers.cpus_per_run, num_gpus=workers.gpus_per_run, max_calls=1,
                      max_retries=0)(_ray_task)
    spec_ref = ray.put(spec)
    pending = {}
    for index, run in todo:
        ref = task.remote(run, spec_ref, str(out_dir), index, overrides[run.run_id], console_level,
                          workers.cpus_per_run)
        pending[ref] = (index, run)
    # Ray queues what does not fit now, and runs it as resources free up
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index, run = pending.pop(ref)
                try:
                    record, per_user = ray.get(ref)
                except ray.exceptions.RayError as error:  # the task's worker died, or the task could not run
                    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
                    record = _driver_failure(run, spec, out_dir, index, overrides[run.run_id],
                                             f"{type(error).__name__}: {lines[-1] if lines else 'the Ray task failed'}",
                                             str(error))
                else:
                    if not _same_on_disk(out_dir, run, record):
                        write_run(out_dir, run, record, per_user)  # written on another node: here too
                progress.ended(run, record)
    finally:
        for ref in pending:  # interrupted: stop the runs still queued or going
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already ended, or Ray is going down
                pass
