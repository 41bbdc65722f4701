"""One way to run many trainings (``recbole_beta.runs``): the engines' options checked once for sweeps and
searches, the in-process run an engine like the others, one vocabulary of run states, one environment
helper, and one early-stop rule (hyperopt's ``no_progress_loss``) for every search engine."""

import json
import os

import numpy as np
import pytest
from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, hp, rand
from hyperopt.early_stop import no_progress_loss

from conftest import SEARCH_FAST as FAST
from recbole_beta.experiments.records import SweepJob
from recbole_beta.experiments.runner import run_sweep
from recbole_beta.experiments.spec import load_spec
from recbole_beta.runs.engines import Engine, EngineError, InProcess, LocalProcesses, RayTasks
from recbole_beta.runs.environment import kept_environ
from recbole_beta.runs.training import FAILED, OK, STATES, train
from recbole_beta.tuning import Patience, TuningError, run_search


def test_the_engine_options_choose_an_engine():
    assert isinstance(Engine.checked().runner(), InProcess)  # the sequential sweep is an engine too
    assert isinstance(Engine.checked(jobs=2).runner(), LocalProcesses)
    ray = Engine.checked("ray", cpus=2, cpus_per_run=0.5, gpus_per_run=1)
    assert isinstance(ray.runner(), RayTasks) and (ray.cpus, ray.cpus_per_run, ray.gpus_per_run) == (2, 0.5, 1)


@pytest.mark.parametrize("options,message", [
    ({"engine": "spark"}, "engine='spark' is not allowed"),
    ({"jobs": 1.5}, "jobs=1.5 is not allowed: must be an integer >= 1"),
    ({"engine": "ray", "cpus_per_run": 0}, "cpus_per_run=0 is not allowed: must be a number > 0"),
    ({"cpus": 2}, "--cpus is for --engine ray"),
    ({"engine": "ray", "cpus": 2, "address": "auto"}, "--cpus starts a local Ray instance"),
])
def test_bad_engine_options(options, message):
    with pytest.raises(EngineError, match=message):
        Engine.checked(**options)


def test_a_search_checks_its_options_as_a_sweep_does(isolated_run):
    """The same check, with the search's names: before this, a search took cpus_per_trial=0 and a
    cpus_per_trial under the hyperopt engine (which runs its trials here) without a word."""
    space = isolated_run / "s.hyper"
    space.write_text("learning_rate choice [0.001]\n")
    with pytest.raises(TuningError, match=r"^cpus_per_trial=0 is not allowed: must be a number > 0$"):
        run_search("AnnealedBetaMultVAE", params_file=space, engine="ray", cpus_per_trial=0, fixed=FAST)
    with pytest.raises(TuningError, match=r"^--cpus_per_trial is for --engine ray$"):
        run_search("AnnealedBetaMultVAE", params_file=space, cpus_per_trial=2, fixed=FAST)
    assert not (isolated_run / "log").exists()  # refused before any run


def test_kept_environ_restores_set_and_unset_variables(monkeypatch):
    monkeypatch.setenv("RB_TEST_SET", "before")
    monkeypatch.delenv("RB_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        with kept_environ("RB_TEST_SET", "RB_TEST_UNSET", RB_TEST_NEW="x"):
            os.environ["RB_TEST_SET"] = "changed"
            os.environ["RB_TEST_UNSET"] = "changed"
            assert os.environ["RB_TEST_NEW"] == "x"
            raise RuntimeError("the block fails: the environment is put back all the same")
    assert os.environ["RB_TEST_SET"] == "before"
    assert "RB_TEST_UNSET" not in os.environ and "RB_TEST_NEW" not in os.environ


def test_one_training_and_its_states(isolated_run):
    ok = train("Pop", "ml-100k", config_dict=FAST)
    assert ok.status == OK and ok.result["test_result"]["ndcg@100"] > 0 and ok.seconds > 0
    bad = train("Pop", "ml-100k", config_dict={**FAST, "topk": [100, 5000]})
    assert bad.status == FAILED and bad.error.startswith("ConfigError: ") and "topk" in bad.error
    assert "Traceback" in bad.traceback and STATES == (OK, FAILED)
    with pytest.raises(ValueError):  # an error the caller does not record propagates
        train("Pop", "ml-100k", config_dict={**FAST, "topk": [100, 5000]}, recorded=(KeyError,))


def test_sweeps_and_searches_write_the_same_states(isolated_run):
    spec = load_spec({"name": "states", "dataset": "ml-100k", "seeds": [2020], "config": FAST,
                      "models": ["Pop", {"model": "Pop", "label": "broken", "config": {"topk": [100, 5000]}}]})
    assert run_sweep(spec, isolated_run / "sweep", progress=False) == (2, 1)
    sweep = {json.loads(p.read_text())["status"] for p in (isolated_run / "sweep" / "runs").glob("*.json")}
    space = isolated_run / "ctl.hyper"
    space.write_text("beta_min choice [0.5]\ncontroller_beta_max choice [0.1,1.0]\n")
    best = run_search("ControlledBetaMultVAE", params_file=space, algo="exhaustive", fixed=FAST,
                      output_dir=isolated_run / "search", seed=0)
    search = {r["status"] for r in best["trials"]}
    assert sweep == search == set(STATES)


def test_a_sweep_job_in_process_writes_its_record(isolated_run):
    spec = load_spec({"name": "one", "dataset": "ml-100k", "seeds": [2020], "config": FAST, "models": ["Pop"]})
    (run,) = spec.runs()
    job = SweepJob(run, spec, isolated_run / "out", 0, isolated=False)
    assert job.folder is None  # in this process it works where the sweep works
    records = []
    InProcess().run([job], lambda j, record: records.append(record), started=lambda j: records.append(j.key))
    assert records[0] == f"run {run.run_id}" and records[1]["status"] == OK
    assert json.loads((isolated_run / "out" / "runs" / f"{run.run_id}.json").read_text()) == json.loads(
        json.dumps(records[1]))


def _stops_with_fmin(losses, patience):
    """How many trials hyperopt's fmin runs with RecBole's early stop (no_progress_loss) on these losses."""
    seen = []

    def objective(_):
        loss = losses[len(seen)]
        seen.append(loss)
        return {"loss": loss, "status": STATUS_FAIL if loss == float("inf") else STATUS_OK}

    fmin(objective, hp.uniform("x", 0, 1), algo=rand.suggest, max_evals=len(losses), trials=Trials(),
         early_stop_fn=no_progress_loss(patience), show_progressbar=False, rstate=np.random.default_rng(0))
    return len(seen)


def _stops_with_patience(losses, patience):
    rule = Patience(patience, bigger=False)
    for n, loss in enumerate(losses, 1):
        record = {"status": FAILED} if loss == float("inf") else {"status": OK, "best_valid_score": loss}
        if rule.add(record):
            return n
    return len(losses)


@pytest.mark.parametrize("losses,patience", [
    ([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 2),  # the first stays best: hyperopt counts it as one without progress
    ([0.5, 0.4, 0.6, 0.6, 0.3, 0.7, 0.8, 0.9], 3),
    ([0.5, float("inf"), 0.6, 0.2, float("inf"), 0.3, 0.4], 2),  # a failed trial is no progress
    ([0.5, 0.6, 0.7], 0),  # 0: never
])
def test_the_grid_and_ray_stop_where_fmin_stops(losses, patience):
    """Patience (the grid's and Ray Tune's) is hyperopt's rule: it stops at the trial fmin stops at."""
    expected = len(losses) if patience == 0 else _stops_with_fmin(losses, patience)
    assert _stops_with_patience(losses, patience) == expected


def test_patience_counted_by_hand():
    # hyperopt's count: 1 after the first trial, +1 per trial without a lower loss, 0 after a lower one
    assert _stops_with_patience([0.5, 0.6, 0.7, 0.8], 2) == 2
    assert _stops_with_patience([0.5, 0.4, 0.6, 0.7, 0.8], 2) == 4
    assert _stops_with_patience([0.5, 0.6, 0.7, 0.8], 0) == 4
