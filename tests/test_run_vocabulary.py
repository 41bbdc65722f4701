"""One run vocabulary (issue 33): a run's status is :class:`RunStatus` everywhere, its record one definition
(:class:`RunRecord`) written by sweeps and searches alike with the protocol it ran under, which the report
reads back; one flag for a run's CPUs in both command lines; a spec's ``plugins`` imported in every worker,
so a strategy and a model defined outside the package run under ``--jobs`` as in one process."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import SWEEP_FAST
from recbole_beta.experiments import analysis
from recbole_beta.experiments.report import write_report
from recbole_beta.runs.record import RunRecord, RunStatus, is_ok, protocol_of
from recbole_beta.runs.training import OK, STATES, run_protocol

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_beta"


# ------------------------------------------------------------------------------------------------ the states


def test_the_status_is_written_nowhere_but_in_its_enum():
    """No module compares or writes the literal "ok": each goes through RunStatus (runs/record.py)."""
    literal = re.compile(r"""["']ok["']""")
    found = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if path.name != "record.py" or path.parent.name != "runs"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if literal.search(line)]
    assert not found, "\n".join(found)


def test_the_status_is_a_string_in_json_and_in_text():
    assert STATES == (RunStatus.OK, RunStatus.FAILED) and OK is RunStatus.OK
    assert RunStatus("ok") is RunStatus.OK and RunStatus.FAILED == "failed"
    assert f"{RunStatus.OK}" == str(RunStatus.OK) == "ok" and f"{RunStatus.FAILED:>7}" == " failed"
    record = RunRecord(RunStatus.FAILED, wall_seconds=1.5, error="ValueError: no")
    assert record.to_dict() == {"status": "failed", "wall_seconds": 1.5, "error": "ValueError: no"}
    assert type(record.to_dict()["status"]) is str and not record.ok
    back = json.loads(json.dumps(RunRecord(RunStatus.OK, test_result={"ndcg@100": 0.5}).to_dict()))
    assert back == {"status": "ok", "test_result": {"ndcg@100": 0.5}} and is_ok(back) and not is_ok({})


# ------------------------------------------------------------------------------------------------ protocol


def test_the_protocol_is_settled_from_the_final_config():
    strong = {"eval_protocol": "strong", "heldout_users": 50, "heldout_ratio": 0.2, "split_seed": 98765,
              "heldout_folds": 5, "fold": None, "seed": 7, "epochs": 3}
    assert run_protocol(strong) == {"eval_protocol": "strong", "heldout_users": 50, "heldout_ratio": 0.2,
                                    "split_seed": 98765, "heldout_folds": 5, "fold": 0, "seed": 7}  # unset: fold 0
    one_split = run_protocol({**strong, "heldout_folds": 0, "fold": None})
    assert "fold" not in one_split and one_split["heldout_folds"] == 0
    weak = run_protocol({"eval_protocol": "weak", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO",
                                                                "group_by": "user"}, "seed": 2020})
    assert weak == {"eval_protocol": "weak", "split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user",
                    "seed": 2020}


def test_a_record_without_a_protocol_is_read_as_before():
    old = {"status": "ok", "seed": 3, "fold": 1, "eval_protocol": "strong",
           "config": {"heldout_folds": 4, "split_seed": 5, "eval_protocol": "weak"}}
    assert protocol_of(old) == {"eval_protocol": "strong", "heldout_folds": 4, "split_seed": 5, "fold": 1, "seed": 3}
    assert protocol_of({"status": "ok", "config": {}}) == {"eval_protocol": "weak"}
    new = {"protocol": {"eval_protocol": "strong", "heldout_folds": 3}, "eval_protocol": "weak"}
    assert protocol_of(new) == new["protocol"]  # the record's own, not what older fields say


def fold_records(out, folds=3, seeds=(1, 2), labels=("Ref", "A"), old=False):
    """Records and per-user tables of a fold sweep; the protocol only in the records (``old``: in the
    records' configs, as written before the protocol field). The spec says nothing of heldout_folds or folds."""
    rng = np.random.default_rng(0)
    (out / "runs").mkdir(parents=True)
    index = 0
    for fold in range(folds):
        users = [f"u{fold * 20 + i}" for i in range(20)]
        for seed in seeds:
            for label in labels:
                ndcg = rng.uniform(0.2, 0.6, len(users))
                run_id = f"{label}__fold{fold}__seed{seed}"
                np.savez_compressed(out / "runs" / f"{run_id}.per_user.npz", user_id=np.arange(1, 21),
                                    user_token=np.array(users), activity=np.arange(5, 25), **{"ndcg@100": ndcg})
                protocol = {"eval_protocol": "strong", "heldout_users": 20, "heldout_ratio": 0.2,
                            "split_seed": 98765, "heldout_folds": folds, "fold": fold, "seed": seed}
                record = {"run_id": run_id, "index": index, "label": label, "group": label, "model": "Pop",
                          "seed": seed, "fold": fold, "cell": {}, "config": {"fold": fold}, "dataset": "fake",
                          **RunRecord(RunStatus.OK, wall_seconds=1.0, best_valid_score=0.1, best_valid_result={},
                                      test_result={"ndcg@100": round(float(ndcg.mean()), 4)},
                                      history=[{"epoch": 0, "train_loss": 1.0}], train_seconds=1.0,
                                      protocol=protocol).to_dict()}
                if old:
                    del record["protocol"]
                    record.update(eval_protocol="strong", config={**record["config"], "heldout_folds": folds})
                (out / "runs" / f"{run_id}.json").write_text(json.dumps(record))
                index += 1
    spec = {"name": "fake", "dataset": "fake", "seeds": list(seeds), "config": {}, "config_files": [],
            "models": [{"label": label, "model": "Pop", "config": {}} for label in labels], "cells": [{}],
            "reference": "Ref", "activity_quantiles": [0.25, 0.5, 0.75]}
    (out / "spec.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("old", [False, True], ids=["protocol", "old-records"])
def test_the_report_reads_the_protocol_from_the_records(tmp_path, old):
    fold_records(tmp_path, old=old)
    write_report(tmp_path, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert "Cross-validated held-out users: folds [0, 1, 2] of 3;" in report and "Incomplete" not in report
    # what |x_u| counts follows the protocol the records hold (the strong one: a held-out user's fold-in)
    assert analysis.activity_measure(analysis.load_runs(tmp_path)) == "fold-in size |x_u|"


def test_a_fold_that_one_method_lacks_is_flagged_from_the_records(tmp_path):
    fold_records(tmp_path)
    for seed in (1, 2):
        (tmp_path / "runs" / f"A__fold2__seed{seed}.json").unlink()
    write_report(tmp_path, figures=False)
    report = (tmp_path / "report.md").read_text()
    assert "**Incomplete sweep:** A lack runs" in report and "folds [0, 1, 2] of 3" in report


def test_a_sweep_record_holds_its_protocol(isolated_run):
    from recbole_beta.experiments.runner import run_sweep
    from recbole_beta.experiments.spec import load_spec

    spec = load_spec({"name": "protocol", "dataset": "ml-100k", "seeds": [2021], "config": SWEEP_FAST,
                      "models": ["Pop"]})
    assert run_sweep(spec, isolated_run / "out", progress=False) == (1, 0)
    (record,) = analysis.load_runs(isolated_run / "out")
    assert record["status"] == RunStatus.OK and record["protocol"]["eval_protocol"] == "weak"
    assert record["protocol"]["seed"] == 2021 and "eval_protocol" not in record  # said once, in the protocol
    assert {"wall_seconds", "train_seconds", "valid_score_bigger", "history"} <= set(record)


# ------------------------------------------------------------------------------------------------ the CPUs flag


def test_cpus_per_trial_is_an_alias_of_cpus_per_run_that_says_so(isolated_run, capsys, no_data):
    from recbole_beta.tuning.cli import build_parser, main

    args, _ = build_parser().parse_known_args(["--cpus_per_trial", "2", "--gpus_per_trial=0.5"])
    assert (args.cpus_per_run, args.gpus_per_run) == (2, 0.5)
    err = capsys.readouterr().err.splitlines()
    assert err == ["recbole-beta: warning: --cpus_per_trial is deprecated: use --cpus_per_run (the same for sweeps)",
                   "recbole-beta: warning: --gpus_per_trial is deprecated: use --gpus_per_run (the same for sweeps)"]
    args, _ = build_parser().parse_known_args(["--cpus_per_run", "3"])
    assert args.cpus_per_run == 3 and capsys.readouterr().err == ""
    # the check names the option by its one name, as the sweeps' does
    assert main(["--model=Pop", "--cpus_per_run=2", "--output_dir", str(isolated_run / "s")]) == 2
    assert capsys.readouterr().err.strip() == "recbole-beta: --cpus_per_run is for --engine ray"


# ------------------------------------------------------------------------------------------------ plugins

PLUGIN = '''"""A strategy and a model of one's own, outside recbole_beta: each registers itself on import."""

from recbole_beta.beta import BetaStrategy, register_strategy
from recbole_beta.model.beta_multvae import BetaMultVAE


@register_strategy("outside_constant")
class OutsideConstant(BetaStrategy):
    @classmethod
    def from_config(cls, config, context):
        return cls()

    def value_at(self, step):
        return 0.0625


class OutsideVAE(BetaMultVAE):
    """A model of one's own: BetaMultVAE's keys and defaults."""
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module of one's own in a folder of its own on the path (spawned workers inherit the path)."""
    folder = tmp_path / "own_code"
    folder.mkdir()
    (folder / "outside_plugin_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    yield "outside_plugin_mod"
    import sys

    sys.modules.pop("outside_plugin_mod", None)


def plugin_spec(**extra):
    return {"name": "plugins", "dataset": "ml-100k", "seeds": [2020, 2021], "config": SWEEP_FAST,
            "models": [{"model": "OutsideVAE", "label": "outside", "config": {"beta_strategy": "outside_constant"}}],
            **extra}


@pytest.mark.parametrize("plugins,message", [
    (["no_such_module_here"], "plugins: module 'no_such_module_here' cannot be imported (ModuleNotFoundError: "
                              "No module named 'no_such_module_here')"),
    ("outside_plugin_mod", "plugins='outside_plugin_mod' is not allowed: give a list of module names"),
])
def test_a_plugin_that_cannot_be_imported_is_one_line(isolated_run, capsys, plugins, message):
    import yaml

    from recbole_beta.experiments.cli import main

    path = isolated_run / "spec.yaml"
    path.write_text(yaml.safe_dump(plugin_spec(plugins=plugins)))
    assert main(["run", str(path), "--out", str(isolated_run / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbole-beta: ") and message in err and "\n" not in err
    assert not (isolated_run / "out").exists()


@pytest.mark.slow
def test_a_strategy_and_a_model_of_ones_own_run_under_jobs(isolated_run, plugin):
    from recbole_beta.experiments.runner import run_sweep
    from recbole_beta.experiments.spec import load_spec

    spec = load_spec(plugin_spec(plugins=[plugin]))  # imported here: the spec's check knows the model
    assert spec.plugins == (plugin,) and spec.to_dict()["plugins"] == [plugin]
    out = isolated_run / "out"
    assert run_sweep(spec, out, progress=False, jobs=2) == (2, 0)
    records = analysis.load_runs(out)
    assert [r["status"] for r in records] == [RunStatus.OK] * 2, [r.get("error") for r in records]
    for record in records:  # each worker imported the module: its strategy set every epoch's beta
        assert record["model"] == "OutsideVAE" and (out / "work" / record["run_id"] / "output.log").is_file()
        assert [h["beta"] for h in record["history"]] == [0.0625] * SWEEP_FAST["epochs"]
    assert json.loads((out / "spec.json").read_text())["plugins"] == [plugin]


def test_a_search_imports_its_plugins_first(isolated_run, capsys, no_data):
    from recbole_beta.tuning.cli import main

    assert main(["--model=Pop", "--plugins", "no_such_module_here", "--output_dir", str(isolated_run / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("recbole-beta: --plugins: module 'no_such_module_here' cannot be imported (ModuleNotFoundError: "
                   "No module named 'no_such_module_here')")
    assert not (isolated_run / "s").exists()
