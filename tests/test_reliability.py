"""No silent wrong results, no work spent before a bad setting is caught, sweeps that heal: each fault a
careful user met, on the real ml-100k and RecBole's real trainer, gives one line (or heals) instead."""

import errno
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

import recbole_beta.quick_start as quick_start
from conftest import SERIAL, run_cli
from recbole_beta.config import Config
from recbole_beta.data_cli import main as data_main
from recbole_beta.errors import CheckpointError, TrainingDivergedError
from recbole_beta.experiments import analysis
from recbole_beta.experiments.cli import main as sweep_main
from recbole_beta.experiments.runner import SweepLock
from recbole_beta.quick_start import prepare, run_recbole_beta

QUIET = {"state": "WARNING", "show_progress": False, "results_dir": None}
STRONG = {"eval_protocol": "strong", "heldout_users": 50}


cli = run_cli


def one_line(err, *fragments):
    assert err.startswith("recbole-beta: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ------------------------------------------------------------------ 1. a checkpoint knows its split

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints of one epoch: under RecBole's split, and under held-out users (fold 0 of 3)."""
    folder = tmp_path_factory.mktemp("split_checkpoints")
    here = os.getcwd()
    os.chdir(folder)
    try:
        weak = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", config_dict={**QUIET, "epochs": 1})
        fold = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k",
                                config_dict={**QUIET, **STRONG, "heldout_folds": 3, "fold": 0, "epochs": 1})
    finally:
        os.chdir(here)
    return {"weak": os.path.join(folder, weak["checkpoint"]), "fold": os.path.join(folder, fold["checkpoint"])}


def test_a_checkpoint_records_its_protocol_and_split(checkpoints):
    split = torch.load(checkpoints["fold"], weights_only=True)["split"]
    assert split["keys"] == {"eval_protocol": "strong", "heldout_users": 50, "heldout_ratio": 0.2,
                             "split_seed": 98765, "heldout_folds": 3, "fold": 0}
    assert len(split["fingerprint"]) == 16
    weak = torch.load(checkpoints["weak"], weights_only=True)["split"]["keys"]
    assert weak["eval_protocol"] == "weak" and weak["seed"] == 2020


@pytest.mark.parametrize("which, overrides, fragments", [
    ("weak", {**STRONG}, ["it was trained under eval_protocol=weak", "this run is eval_protocol=strong"]),
    ("fold", {}, ["it was trained under eval_protocol=strong", "this run is eval_protocol=weak"]),
    ("fold", {**STRONG, "heldout_folds": 3, "fold": 1}, ["fold=0", "fold=1"]),
    ("weak", {"seed": 7}, ["seed=2020", "seed=7"]),  # RecBole's split shuffles with the seed
])
def test_a_resume_under_another_protocol_or_split_stops_before_the_data(monkeypatch, capsys, no_data, checkpoints,
                                                                         which, overrides, fragments):
    args = [f"--{k}={v}" for k, v in overrides.items()]
    code, err, _ = cli(monkeypatch, capsys, "--model=AnnealedBetaMultVAE", "--epochs=2",
                       f"--resume={checkpoints[which]}",
                       *args)
    assert code == 2
    one_line(err, f"cannot resume from {checkpoints[which]}", *fragments)


@pytest.mark.slow
def test_the_same_keys_over_other_data_stop_on_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = Path(__import__("recbole").__file__).parent / "dataset_example/ml-100k/ml-100k.inter"
    lines = source.read_text().splitlines(keepends=True)
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "copy.inter").write_text("".join(lines))
    config = {**QUIET, **STRONG, "heldout_folds": 3, "fold": 0, "epochs": 1, "data_path": str(tmp_path)}
    trained = run_recbole_beta("AnnealedBetaMultVAE", "copy", config_dict=config)
    # the same file less one interaction: the same users, items and split keys, another split
    (tmp_path / "copy" / "copy.inter").write_text("".join(lines[:10] + lines[11:]))
    with pytest.raises(CheckpointError, match="it was trained on another split of the data"):
        run_recbole_beta("AnnealedBetaMultVAE", "copy", config_dict={**config, "epochs": 2},
                         resume=trained["checkpoint"])


@pytest.mark.slow
def test_the_same_split_resumes(checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", resume=checkpoints["fold"],
                              config_dict={**QUIET, **STRONG, "heldout_folds": 3, "fold": 0, "epochs": 2})
    assert [e["epoch"] for e in result["history"]] == [0, 1]


def test_epochs_zero_evaluates_a_checkpoint_and_says_so(checkpoints, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    result = run_recbole_beta("AnnealedBetaMultVAE", "ml-100k", resume=checkpoints["weak"],
                              config_dict={**QUIET, "epochs": 0, "state": "INFO"})
    assert [e["epoch"] for e in result["history"]] == [0]  # the checkpoint's epoch, nothing trained
    assert result["test_result"]["ndcg@100"] > 0
    log = (tmp_path / "log").rglob("*.log")
    assert any("no training, the checkpoint is evaluated" in path.read_text() for path in log)


# ------------------------------------------------------------------ 2. RecBole's run keys

@pytest.mark.parametrize("args, fragments", [
    (["--epochs=-1"], ["epochs=-1 is not allowed: must be an integer >= 0"]),
    (["--epochs=0"], ["epochs=0 is not allowed: trains nothing", "--resume to evaluate a checkpoint"]),
    (["--epochs=2.5"], ["epochs=2.5 is not allowed: must be an integer"]),
    (["--epochs="], ["epochs='' is not allowed: a value is missing"]),
    (["--epochs"], ["'--epochs' is not a --key=value argument", "--epochs=VALUE"]),
    (["--train_batch_size=0"], ["train_batch_size=0 is not allowed: must be an integer >= 1"]),
    (["--eval_batch_size=-4"], ["eval_batch_size=-4 is not allowed"]),
    (["--learning_rate=nan"], ["learning_rate='nan' is not allowed: must be a number > 0"]),
    (["--learning_rate=1e999"], ["learning_rate=inf is not allowed: must be a finite number > 0"]),
    (["--learning_rate=0"], ["learning_rate=0 is not allowed: must be a number > 0"]),
    (["--weight_decay=-1"], ["weight_decay=-1 is not allowed: must be a number >= 0"]),
    (["--stopping_step=0"], ["stopping_step=0 is not allowed: must be an integer >= 1"]),
    (["--eval_step=-1"], ["eval_step=-1 is not allowed"]),
    (["--seed=-3"], ["seed=-3 is not allowed"]),
    (["--topk=[0]"], ["topk=[0] is not allowed: must be an integer >= 1 or a non-empty list of them"]),
])
def test_recboles_run_keys_fail_before_the_data(monkeypatch, capsys, no_data, args, fragments):
    code, err, _ = cli(monkeypatch, capsys, "--model=AnnealedBetaMultVAE", *args)
    assert code == 2
    one_line(err, *fragments)


# ------------------------------------------------------------------ 3. outputs checked first, never lost

@pytest.mark.parametrize("key", ["results_dir", "checkpoint_dir"])
def test_an_output_folder_that_cannot_be_written_fails_first(monkeypatch, capsys, no_data, tmp_path, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err, _ = cli(monkeypatch, capsys, "--model=Pop", f"--{key}={blocker / 'sub'}")
    assert code == 2
    one_line(err, f"{key}='{blocker / 'sub'}' cannot be written: Not a directory")


def test_a_result_that_cannot_be_written_at_the_end_is_printed(monkeypatch, capsys, tmp_path):
    def disk_full(path, data, indent=1, end=""):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(quick_start, "write_json", disk_full)
    code, err, out = cli(monkeypatch, capsys, "--model=Pop", f"--results_dir={tmp_path / 'results'}")
    assert code == 2
    one_line(err, f"cannot write the result file in results_dir='{tmp_path / 'results'}': No space left on device",
               "printed above in full")
    printed = json.loads(out)
    assert printed["test_result"]["ndcg@100"] > 0 and printed["model"] == "Pop"


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(monkeypatch, capsys):
    import recbole_beta.checkpoint as checkpoint

    def disk_full(path, write, binary=False):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    code, err, _ = cli(monkeypatch, capsys, "--model=AnnealedBetaMultVAE", "--epochs=1")
    assert code == 2
    one_line(err, "cannot save the checkpoint saved/AnnealedBetaMultVAE-", "No space left on device; none was written")


# ------------------------------------------------------------------ 4. no non-finite weights kept

def test_non_finite_weights_are_never_saved_as_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config("AnnealedBetaMultVAE", "ml-100k", config_dict={**QUIET, "epochs": 1}, argv=[])
    _, (train_data, valid_data, _), model, trainer = prepare(config)
    trainer._save_checkpoint(0)
    good = torch.load(trainer.saved_model_file, weights_only=True)["state_dict"]
    with torch.no_grad():
        model.decoder[-1].weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError) as error:
        trainer._save_checkpoint(1)
    assert "the weights became non-finite (decoder." in str(error.value)
    assert f"the last good checkpoint {trainer.saved_model_file} is kept" in str(error.value)
    kept = torch.load(trainer.saved_model_file, weights_only=True)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert torch.equal(kept["state_dict"]["decoder.2.weight"], good["decoder.2.weight"])


@pytest.mark.slow
def test_a_diverging_run_stops_in_one_line_and_keeps_no_bad_checkpoint(monkeypatch, capsys, tmp_path):
    code, err, _ = cli(monkeypatch, capsys, "--model=ConstantBetaMultVAE", "--learning_rate=1e12", "--epochs=5",
                       "--checkpoint_dir=ckpt")
    assert code == 1
    one_line(err)
    assert "non-finite" in err or "training loss became" in err
    for path in (tmp_path / "ckpt").glob("*.pth"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------ 5. sweeps that heal

def sweep_spec(path, models=("Pop", "EASE")):
    path.write_text(yaml.safe_dump({"name": "heal", "dataset": "ml-100k", "seeds": [2020], "models": list(models),
                                    "config": {"state": "WARNING"}}))
    return path


@pytest.mark.slow
def test_unreadable_run_files_are_named_set_aside_and_redone(tmp_path, capsys):
    spec, out = sweep_spec(tmp_path / "s.yaml"), tmp_path / "out"
    assert sweep_main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    pop_json = next((out / "runs").glob("Pop__*.json"))
    ease_npz = next((out / "runs").glob("EASE__*.per_user.npz"))
    before = json.loads(pop_json.read_text())["test_result"]
    pop_json.write_text(pop_json.read_text()[:40])  # what a crash or a full disk leaves
    ease_npz.write_bytes(ease_npz.read_bytes()[:100])
    capsys.readouterr()

    # the report names them instead of failing
    assert sweep_main(["report", str(out), "--no-figures"]) == 0
    report = (out / "report.md").read_text()
    assert "## Files that could not be read" in report and pop_json.name in report and ease_npz.name in report

    # the rerun moves them aside and redoes both runs, to the same numbers
    assert sweep_main(["run", str(spec), "--out", str(out), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert f"{pop_json} cannot be read" in err and "moved to " + pop_json.name + ".unreadable" in err
    assert f"{ease_npz} cannot be read" in err
    assert (out / "runs" / (pop_json.name + ".unreadable")).is_file()
    assert json.loads(pop_json.read_text())["test_result"] == before
    assert all(r["status"] == "ok" for r in analysis.load_runs(out))


def _hold_lock(out, ready):
    with SweepLock(out):
        ready.set()
        time.sleep(600)


def test_a_second_sweep_on_the_same_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, capsys):
    spec, out = sweep_spec(tmp_path / "s.yaml", ("Pop",)), tmp_path / "out"
    out.mkdir()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_lock, args=(out, ready))
    holder.start()
    try:
        assert ready.wait(60)
        assert sweep_main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
        one_line(capsys.readouterr().err.strip(), f"another sweep is running on {out}", f"pid {holder.pid}")
        assert not (out / "runs").exists()  # nothing done twice
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert sweep_main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0


def test_a_sweep_with_failed_runs_exits_non_zero_with_a_count(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "f", "dataset": "ml-100k", "seeds": [2020, 2021],
                                    # a setting every check accepts, whose training diverges: each run fails
                                    "models": ["Pop", {"model": "AnnealedBetaMultVAE",
                                                       "config": {"learning_rate": 1.0e12, "epochs": 2}}],
                                    "config": {"state": "WARNING"}}))
    assert sweep_main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--no-figures"]) == 1
    assert "recbole-beta: 2 of 4 runs failed" in capsys.readouterr().err
    errors = [json.loads(p.read_text())["error"] for p in (tmp_path / "out" / "runs").glob("*.json")
              if json.loads(p.read_text())["status"] != "ok"]
    assert len(errors) == 2 and all(e.startswith("TrainingDivergedError") for e in errors)


def test_an_unwritable_sweep_folder_fails_first(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = sweep_spec(tmp_path / "s.yaml", ("Pop",))
    assert sweep_main(["run", str(spec), "--out", str(blocker / "out"), "--quiet"]) == 2
    one_line(capsys.readouterr().err.strip(), f"--out='{blocker / 'out'}' cannot be written")


def test_report_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert sweep_main(["report", str(tmp_path / "nowhere")]) == 2
    one_line(capsys.readouterr().err.strip(), f"{tmp_path / 'nowhere'} is not a sweep folder")


# ------------------------------------------------------------------ 6. one line, with file and line

@pytest.mark.parametrize("content, fragments", [
    (None, ["config file {f}: no such file"]),
    ("dir", ["config file {f}: not a file"]),
    ("epochs: [1\nlearning_rate: 0.1\n", ["config file {f}, line 2: not valid YAML"]),
    ("- 1\n- 2\n", ["config file {f}: holds a list, not a mapping"]),
    (b"epochs: 1 # \xe9\n", ["config file {f}: not UTF-8 text"]),
])
def test_bad_config_files(monkeypatch, capsys, no_data, tmp_path, content, fragments):
    f = tmp_path / "c.yaml"
    if content == "dir":
        f.mkdir()
    elif isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    code, err, _ = cli(monkeypatch, capsys, "--model=Pop", f"--config_files={f}")
    assert code == 2
    one_line(err, *(x.format(f=f) for x in fragments))


def test_a_filter_that_leaves_no_users(monkeypatch, capsys):
    code, err, _ = cli(monkeypatch, capsys, "--model=Pop", "--user_inter_num_interval=[10000,inf)")
    assert code == 2
    one_line(err, "no interaction is left after RecBole's filters")


def test_converter_input_that_is_not_utf8_names_the_line(tmp_path, capsys):
    source = tmp_path / "plays.csv"
    source.write_bytes(b"user_id,item_id\n1,2\n3,4\n5,caf\xe9\n")
    assert data_main(["convert", str(source), "--format", "csv", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    one_line(capsys.readouterr().err.strip(), f"{source}:4: not UTF-8 text (byte 0xe9 at column 6)")


def test_a_vae_cf_folder_without_targets_is_refused(tmp_path, capsys):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "unique_sid.txt").write_text("10\n20\n30\n")
    for name, lines in {"train.csv": ["0,0", "0,1", "1,2"], "validation_tr.csv": ["2,0"],
                        "validation_te.csv": ["2,1"], "test_tr.csv": ["3,1"], "test_te.csv": []}.items():
        (folder / name).write_text("uid,sid\n" + "".join(f"{line}\n" for line in lines))
    assert data_main(["convert", str(folder), "--format", "vae_cf", "--name", "x", "--out", str(tmp_path / "d")]) == 2
    one_line(capsys.readouterr().err.strip(), f"{folder / 'test_te.csv'}: holds no targets (only its header)")


def test_a_split_with_a_handful_of_training_users_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    rows = ["user_id:token\titem_id:token"] + [f"u{u}\ti{(u * 7 + k) % 30}" for u in range(12) for k in range(10)]
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "few.inter").write_text("\n".join(rows) + "\n")
    config = {**QUIET, "data_path": str(tmp_path), "eval_protocol": "strong", "heldout_users": 4, "epochs": 1,
              "load_col": {"inter": ["user_id", "item_id"]}, "topk": [5], "valid_metric": "NDCG@5"}
    result = run_recbole_beta("Pop", "few", config_dict=config)
    assert result["protocol_users"]["train"] == 4
    assert "only 4 training users" in caplog.text


# ------------------------------------------------------------------ found in review

def test_a_separator_is_a_value_not_a_missing_one(tmp_path):
    """A tab or a space is what RecBole's separator keys hold: only an empty value is missing."""
    f = tmp_path / "c.yaml"
    f.write_text('field_separator: "\\t"\nseq_separator: " "\n')
    config = Config("Pop", "ml-100k", config_file_list=[str(f)], config_dict={"state": "WARNING"}, argv=[])
    assert config["field_separator"] == "\t" and config["seq_separator"] == " "


@pytest.mark.slow
def test_a_record_that_is_json_but_not_a_record_is_redone(tmp_path, capsys):
    spec, out = sweep_spec(tmp_path / "s.yaml", ("Pop",)), tmp_path / "out"
    assert sweep_main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    record = next((out / "runs").glob("Pop__*.json"))
    record.write_text("null")
    assert sweep_main(["report", str(out), "--no-figures"]) == 0  # named, not a traceback
    assert "not a run record" in (out / "report.md").read_text()
    assert sweep_main(["run", str(spec), "--out", str(out), "--quiet", "--no-figures"]) == 0
    assert "not a run record" in capsys.readouterr().err
    assert json.loads(record.read_text())["status"] == "ok"


def test_a_split_in_time_order_does_not_depend_on_the_seed():
    from recbole_beta.data.heldout import split_keys

    def keys(order, seed):
        args = {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": "user", "order": order, "mode": "full"}
        return split_keys(Config("Pop", "ml-100k", config_dict={"eval_args": args, "seed": seed, "state": "WARNING"},
                                 argv=[]))

    assert keys("TO", 1) == keys("TO", 2)  # sorted by time: the seed moves nothing
    assert keys("RO", 1) != keys("RO", 2)  # shuffled with the seed


@pytest.mark.slow
@SERIAL
def test_an_error_in_a_ddp_rank_is_one_line(tmp_path, monkeypatch):
    """What a rank stops on (here the split: more folds than users) reaches the launcher as itself."""
    from conftest import write_tiny_dataset
    from recbole_beta.errors import RecBoleBetaError
    from recbole_beta.quick_start import run

    monkeypatch.chdir(tmp_path)
    tiny = write_tiny_dataset(tmp_path)
    config = {**QUIET, **tiny, "eval_protocol": "strong", "heldout_folds": 5, "heldout_users": 1,
              "use_gpu": False, "epochs": 1}
    dataset = config.pop("dataset")
    with pytest.raises(RecBoleBetaError, match="cuts 4 users into folds that hold no test user"):
        run("Pop", dataset, config_dict=config, nproc=2, port="29611")
