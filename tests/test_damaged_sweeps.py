"""A sweep folder with damaged run files (issue 31, item 2), on a real two-seed ml-100k sweep: ``report``
names each damaged run in one line and leaves it out of the tables, and the next ``run`` redoes exactly
those runs."""

import json
import shutil
import zipfile

import pandas as pd
import pytest
import yaml

from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main

pytestmark = pytest.mark.slow  # a live two-seed sweep on ml-100k


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep (Pop and ConstantBetaMultVAE x 2 seeds, one epoch) and its spec file."""
    root = tmp_path_factory.mktemp("damaged")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "damaged", "dataset": "ml-100k", "seeds": [2020, 2021],
                                    "config": {"epochs": 1, "state": "WARNING"},
                                    "models": ["Pop", {"model": "ConstantBetaMultVAE", "label": "Const"}]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # RecBole's log/ and saved/
        assert main(["run", str(spec), "--out", str(root / "out"), "--quiet", "--no-figures"]) == 0
    return spec, root / "out"


@pytest.fixture
def sweep(finished, tmp_path):
    spec, out = finished
    shutil.copytree(out, tmp_path / "out")
    return spec, tmp_path / "out"


def run_file(out, label, seed, suffix=".json"):
    return next((out / "runs").glob(f"{label}__seed{seed}__*{suffix}"))


def contents(out):
    return {p.name: p.read_bytes() for p in (out / "runs").iterdir()}


def test_a_truncated_record_and_a_garbage_table_are_named_left_out_and_redone(sweep, capsys):
    spec, out = sweep
    record = run_file(out, "Pop", 2021)
    table = run_file(out, "Const", 2020, ".per_user.npz")
    record.write_text(record.read_text()[:60])  # what a crash or a full disk leaves
    table.write_bytes(b"garbage" * 50)
    capsys.readouterr()

    assert main(["report", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert f"skipped damaged run runs/{record.name}: truncated JSON" in err
    assert any(line.startswith(f"skipped damaged run runs/{table.name}: ") for line in err), err
    report = (out / "report.md").read_text()
    assert f"runs/{record.name}" in report and f"runs/{table.name}" in report and "truncated JSON" in report
    summary = pd.read_csv(out / "summary.csv").set_index("label")
    assert summary.loc["Pop", "n_seeds"] == 1 and summary.loc["Const", "n_seeds"] == 1  # left out of the tables
    assert set(pd.read_csv(out / "per_user.csv")["label"]) == {"Pop", "Const"}

    damaged = (record.name.split(".")[0], table.name.split(".")[0])  # the two runs' ids
    untouched = {k: v for k, v in contents(out).items() if k.split(".")[0] not in damaged}
    assert len(untouched) == 4
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert "2 runs done now (0 failed); 4 in the sweep" in capsys.readouterr().out
    after = contents(out)
    assert all(after[name] == data for name, data in untouched.items())  # no other run redone
    assert all(r["status"] == "ok" for r in analysis.load_runs(out)) and len(analysis.load_runs(out)) == 4


@pytest.mark.parametrize("damage, reason", [
    ("", "empty file"),
    ("[1, 2]", "not a run record"),
    ('{"run_id": "x", "status": "ok"}', "a run record without group, seed"),
])
def test_records_that_parse_but_cannot_serve_are_damaged_too(sweep, capsys, damage, reason):
    spec, out = sweep
    record = run_file(out, "Const", 2021)
    record.write_text(damage)
    capsys.readouterr()
    assert main(["report", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert f"skipped damaged run runs/{record.name}: {reason}" in err, err
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert "1 runs done now (0 failed); 4 in the sweep" in capsys.readouterr().out


def test_a_zip_that_is_no_per_user_table_is_damaged(sweep, capsys):
    spec, out = sweep
    table = run_file(out, "Pop", 2020, ".per_user.npz")
    with zipfile.ZipFile(table, "w") as archive:  # a sound zip, but not of the table's arrays
        archive.writestr("notes.txt", "hello")
    capsys.readouterr()
    assert main(["report", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert f"skipped damaged run runs/{table.name}: " in err and "Traceback" not in err, err
    assert json.loads(run_file(out, "Pop", 2020).read_text())["status"] == "ok"  # the record is kept as it was
    assert main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert "1 runs done now (0 failed); 4 in the sweep" in capsys.readouterr().out
