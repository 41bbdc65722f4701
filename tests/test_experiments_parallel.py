"""Sweeps on several local processes (``--jobs``) and on Ray (``--engine ray``, a local 2-CPU instance), on
the real ml-100k: the same records as the sequential sweep, written by the workers as runs end, each run in
its own folder; finished runs skipped; a failed run recorded and retried, a run whose process dies too; a
killed driver loses no finished run; bad options fail before anything runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, SERIAL, SWEEP_FAST
from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main
from recbole_beta.experiments.records import portable
from recbole_beta.experiments.runner import run_sweep
from recbole_beta.experiments.spec import load_spec


def spec_dict(**extra):
    return {"name": "parallel", "dataset": "ml-100k", "seeds": [2020, 2021], "config": SWEEP_FAST,
            "models": ["AnnealedBetaMultVAE", "Pop"], "reference": "AnnealedBetaMultVAE", **extra}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The sequential sweep (one run after another in this process): what the others must give."""
    out = tmp_path_factory.mktemp("sequential")
    spec = load_spec(spec_dict())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out)  # RecBole's log/ goes here, not into the checkout
        patch.setattr(sys, "argv", ["pytest"])
        assert run_sweep(spec, out / "sweep", progress=False) == (4, 0)
    return spec, out / "sweep"


def assert_same_runs(out, expected_out):
    runs = {r["run_id"]: r for r in analysis.load_runs(out)}
    expected = {r["run_id"]: r for r in analysis.load_runs(expected_out)}
    assert runs.keys() == expected.keys() and len(runs) == 4
    for run_id, record in runs.items():
        want = expected[run_id]
        assert record["status"] == "ok", record.get("error")
        assert record["index"] == want["index"]
        assert record["test_result"] == want["test_result"], run_id  # same seed, same numbers
        assert record["best_valid_result"] == want["best_valid_result"], run_id
        assert [h.get("train_loss") for h in record["history"]] == [h.get("train_loss") for h in want["history"]]
        pd.testing.assert_frame_equal(analysis.load_per_user(out, record), analysis.load_per_user(expected_out, want))
        # each run worked in its own folder: its RecBole log is there, and its process's output
        assert list((out / "work" / run_id / "log").rglob("*.log")), run_id
        assert (out / "work" / run_id / "output.log").is_file()


@pytest.mark.slow
@SERIAL
def test_jobs_give_the_sequential_records(sequential, isolated_run, capsys):
    spec, expected = sequential
    out = isolated_run / "jobs"
    assert run_sweep(spec, out, progress=True, jobs=2) == (4, 0)
    assert_same_runs(out, expected)
    bar = capsys.readouterr().err
    assert "4/4" in bar and any(f"{n}/4" in bar for n in (1, 2, 3))  # counted as runs ended, not at the end
    assert not (isolated_run / "log").exists()  # nothing ran in the driver's working directory
    assert not (out / "checkpoints").exists()
    assert run_sweep(spec, out, progress=False, jobs=2) == (0, 0)  # finished: skipped


@pytest.mark.slow
@SERIAL
def test_ray_gives_the_sequential_records(sequential, isolated_run):
    import ray  # a hard dependency: a ray that fails to import fails here, it is not skipped

    spec, expected = sequential
    out = isolated_run / "ray"
    try:
        assert run_sweep(spec, out, progress=False, engine="ray", cpus=2) == (4, 0)
        assert not ray.is_initialized()  # the sweep shut down the instance it started
    finally:
        ray.shutdown()
    assert_same_runs(out, expected)
    assert not (isolated_run / "log").exists()
    assert run_sweep(spec, out, progress=False, engine="ray", cpus=2) == (0, 0)  # nothing to do: Ray not started
    write_and_read_report(out, spec)


def write_and_read_report(out, spec):
    from recbole_beta.experiments.report import write_report

    write_report(out, spec, figures=False)
    assert "4 runs finished, 0 failed" in (out / "report.md").read_text()


@pytest.mark.slow
@SERIAL
@pytest.mark.parametrize("engine", [{"jobs": 2}, {"engine": "ray", "cpus": 2}], ids=["jobs", "ray"])
def test_a_failed_run_is_recorded_then_retried(isolated_run, engine):
    settings = isolated_run / "settings.yaml"
    settings.write_text("topk: [100, 5000]\n")  # more than ml-100k's items: B fails after loading the data
    spec = load_spec(spec_dict(seeds=[2020], reference=None, config_files=["settings.yaml"], models=[
        {"model": "Pop", "label": "A", "config": {"topk": [10, 20, 50, 100]}}, {"model": "Pop", "label": "B"}]))
    out = isolated_run / "out"
    assert run_sweep(spec, out, progress=False, **engine) == (2, 1)
    runs = {r["label"]: r for r in analysis.load_runs(out)}
    assert runs["A"]["status"] == "ok" and runs["B"]["status"] == "failed"
    assert "topk=[100, 5000] is not allowed" in runs["B"]["error"]

    settings.write_text("topk: [10, 20, 50, 100]\n")  # fixed; the spec (and the run ids) the same
    assert run_sweep(spec, out, progress=False, **engine) == (1, 0)  # B retried, A skipped
    runs = {r["label"]: r for r in analysis.load_runs(out)}
    assert runs["B"]["status"] == "ok" and "error" not in runs["B"]
    assert (out / "runs" / f"{runs['B']['run_id']}.per_user.npz").is_file()


def group_alive(pgid):
    """Processes of the group that have not ended (zombies aside), read from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def wait_until_the_group_ends(pgid):
    """Return once no process of the group is alive: each one's end awaited on its pidfd, which turns readable
    as the process ends (an event, not a deadline); where pidfds are missing (Linux < 5.3), /proc is read again."""
    import select

    while alive := group_alive(pgid):
        for pid in alive:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # ended already
            except (AttributeError, OSError):  # no pidfd_open here
                time.sleep(0.05)
                continue
            try:
                select.select([fd], [], [])
            finally:
                os.close(fd)


@pytest.mark.slow
@SERIAL
def test_a_killed_driver_loses_no_finished_run(isolated_run):
    spec_file = isolated_run / "spec.yaml"
    # the two Pop runs first, then the two others, which start only as the Pop runs end: the driver is
    # killed as soon as the first record appears, with runs still to go
    spec_file.write_text(yaml.safe_dump(spec_dict(reference=None, models=["Pop", "AnnealedBetaMultVAE"])))
    out = isolated_run / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]]
                                                                      if os.environ.get("PYTHONPATH") else []))}
    with open(isolated_run / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "recbole_beta.experiments", "run", str(spec_file), "--out",
                                   str(out), "--jobs", "2", "--quiet", "--no-figures"],
                                  cwd=isolated_run, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        # until the first record is written (or the driver ends, which fails the test below)
        while not list((out / "runs").glob("*.json")) and driver.poll() is None:
            time.sleep(0.05)
        assert driver.poll() is None, (isolated_run / "driver.log").read_text()  # still going: not vacuous
        if Path("/proc").is_dir():
            assert len(group_alive(driver.pid)) > 1  # the driver and its workers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        if Path("/proc").is_dir():  # its workers end with it
            wait_until_the_group_ends(driver.pid)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the processes this test started, if any is left
        except (ProcessLookupError, PermissionError):
            pass

    finished = {}
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())  # whole
        assert record["status"] == "ok" and record["label"] == "Pop"
        table = analysis.load_per_user(out, record)
        assert len(table) == 943 and np.isfinite(table["ndcg@100"]).all()
        finished[path] = path.read_bytes()
    assert 1 <= len(finished) <= 2

    spec = load_spec(spec_file)
    assert run_sweep(spec, out, progress=False, jobs=2) == (4 - len(finished), 0)
    assert all(path.read_bytes() == data for path, data in finished.items())  # skipped, not run again
    assert sorted(r["status"] for r in analysis.load_runs(out)) == ["ok"] * 4


def spawned_workers():
    """This process's children that multiprocessing spawned to run a run (not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@SERIAL
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes in /proc")
def test_a_run_whose_process_dies_is_recorded_as_failed_and_retried(isolated_run):
    import threading

    spec = load_spec(spec_dict(reference=None, models=["Pop"]))
    out = isolated_run / "out"
    result = {}
    sweep = threading.Thread(target=lambda: result.update(first=run_sweep(spec, out, progress=False, jobs=2)))
    sweep.start()
    while not spawned_workers() and sweep.is_alive():  # until the sweep has started a worker
        time.sleep(0.02)
    workers = spawned_workers()
    assert workers, "the sweep ended before it started a worker"
    os.kill(workers[0], signal.SIGKILL)  # a worker this test's sweep started: killed, as the OOM killer would
    sweep.join()  # the sweep's end, however long the other run takes
    assert result["first"] == (2, 1)
    (failed,) = [r for r in analysis.load_runs(out) if r["status"] != "ok"]
    assert failed["error"].startswith("WorkerDied: ") and "signal 9" in failed["error"]
    assert run_sweep(spec, out, progress=False, jobs=2) == (1, 0)  # retried
    assert [r["status"] for r in analysis.load_runs(out)] == ["ok", "ok"]


OPTION_ERRORS = [
    (["--cpus", "2"], "--cpus is for --engine ray"),
    (["--gpus", "1", "--ray_address", "auto"], "--ray_address, --gpus_per_run are for --engine ray"),
    (["--engine", "ray", "--jobs", "2"], "--jobs is for local processes"),
    (["--jobs", "0"], "jobs=0 is not allowed: must be an integer >= 1"),
    (["--engine", "ray", "--cpus", "2", "--ray_address", "auto"], "--cpus starts a local Ray instance"),
    (["--engine", "ray", "--cpus_per_run", "0"], "cpus_per_run=0.0 is not allowed: must be a number > 0"),
]


@pytest.mark.parametrize("options,message", OPTION_ERRORS, ids=[m for _, m in OPTION_ERRORS])
def test_bad_engine_options_fail_before_anything_runs(isolated_run, capsys, options, message):
    path = isolated_run / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict()))
    assert main(["run", str(path), "--out", str(isolated_run / "out"), "--quiet", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbole-beta: ") and message in err and "\n" not in err
    assert not (isolated_run / "out").exists()


def test_paths_travel_absolute(isolated_run):
    (isolated_run / "settings.yaml").write_text("epochs: 1\n")
    own = load_spec(spec_dict(dataset="mydata", config_files=["settings.yaml"], reference=None, models=[
        {"model": "Pop", "label": "here", "config": {"data_path": "rel/data"}}, {"model": "Pop", "label": "default"}]))
    spec, overrides = portable(own, own.runs())
    assert spec.config_files == [str(isolated_run / "settings.yaml")] and own.config_files == ["settings.yaml"]
    paths = {run.label: overrides[run.run_id].get("data_path") for run in own.runs()}
    # RecBole reads <data_path>/<dataset>/ against the working directory; RecBole's default data_path: dataset/
    assert paths == {"here": str(isolated_run / "rel" / "data"), "default": str(isolated_run / "dataset")}
    ml100k = load_spec(spec_dict())
    assert all(o == {} for o in portable(ml100k, ml100k.runs())[1].values())  # RecBole reads its own copy
