"""Named contracts between the package's parts: what a run reads of a held-out split, a model of its dataset and
a trainer of its model is declared, not probed with ``getattr``; trainers are classes named as RecBole names
them; the plugin's metric is registered by an explicit call; RecBole's reading of ``--key=value`` values is a
public function; a resume reads its checkpoint once; ``enable_amp`` is checked against the hardware for every
trainer, RecBole's included."""

import ast
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recbole.config import Config as RecBoleConfig
from recbole.trainer import RecVAETrainer, Trainer
from recbole.utils import ModelType

from recbole_beta import precision
from recbole_beta.config import Config, convert_values
from recbole_beta.data.heldout import HeldOutDataset, HeldOutSplit
from recbole_beta.quick_start import prepare, run_recbole_beta
from recbole_beta.registry import get_trainer
from recbole_beta.trainer import BetaTrainer, PluginTrainerMixin

REPO = Path(__file__).resolve().parents[1]

#: attributes the package's parts read of each other through a declared interface, never by probing
CONTRACT_NAMES = {"train_user_ids", "protocol_users", "seen_dataset", "_roles", "roles", "split", "sparse_input",
                  "validate_config", "plugins", "generator", "transposed_parameters", "train_stage"}


def test_no_part_probes_another_for_a_declared_attribute():
    probes = []
    for path in sorted((REPO / "recbole_beta").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant) and node.args[1].value in CONTRACT_NAMES):
                probes.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not probes, probes


def test_the_held_out_split_declares_what_it_holds():
    """Every member of the HeldOutSplit protocol is one HeldOutDataset declares (before build() sets them)."""
    members = set(HeldOutSplit.__annotations__) | {"roles", "training_dataset"}
    assert all(hasattr(HeldOutDataset, name) for name in members), members


@pytest.mark.parametrize("model, recbole_class", [("MultiVAE", Trainer), ("RecVAE", RecVAETrainer)])
def test_recboles_trainers_are_classes_with_recboles_names(model, recbole_class):
    trainer = get_trainer(ModelType.GENERAL, model)
    assert trainer.__name__ == trainer.__qualname__ == recbole_class.__name__
    assert issubclass(trainer, PluginTrainerMixin) and issubclass(trainer, recbole_class)
    assert get_trainer(ModelType.GENERAL, model) is trainer  # one class per RecBole trainer
    assert get_trainer(ModelType.GENERAL, "AnnealedBetaMultVAE") is BetaTrainer


# ------------------------------------------------------------------------------------------- metrics


def run_fresh(code):
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_importing_registers_no_metric_until_register_metrics_is_called():
    out = run_fresh(
        "from recbole.evaluator import register\n"
        "import recbole_beta.metrics as metrics, recbole_beta.config, recbole_beta.experiments.report as report\n"
        "assert 'truncatedrecall' not in register.metrics_dict, 'registered as a side effect of an import'\n"
        "metrics.register_metrics(); metrics.register_metrics()\n"
        "assert register.metrics_dict['truncatedrecall'] is metrics.TruncatedRecall\n"
        "assert register.metric_types['truncatedrecall'] == metrics.TruncatedRecall.metric_type\n"
        "assert 'truncatedrecall' not in register.smaller_metrics\n"
        "print(report.metric_label('truncatedrecall@20'))\n"
    )
    assert out.strip() == "TruncatedRecall@20"


def test_the_plugins_config_and_the_report_register_the_metric_themselves():
    """The Config registers it as it is built (RecBole checks ``metrics`` then); the report names it without one."""
    out = run_fresh(
        "from recbole_beta.experiments.report import metric_label\n"
        "print(metric_label('truncatedrecall@20'))\n"
    )
    assert out.strip() == "TruncatedRecall@20"
    run_fresh(
        "from recbole_beta.config import Config\n"
        "config = Config(model='BetaMultVAE', dataset='ml-100k', argv=[],\n"
        "                config_dict={'metrics': ['TruncatedRecall', 'NDCG'], 'valid_metric': 'truncatedrecall@20'})\n"
        "assert config['metrics'] == ['TruncatedRecall', 'NDCG']\n"
    )


# ------------------------------------------------------------------------------- command-line values


def test_command_line_values_are_read_as_recboles_config_reads_them():
    given = {"a": "[1, 2]", "b": "True", "c": "false", "d": "0.5", "e": "hello", "f": "None", "g": "{'x': 1}",
             "h": "print", "i": "1e-3", "j": 5, "k": "(1, 2)", "l": "a b", "m": "EvaluatorType.RANKING"}
    assert convert_values(dict(given)) == RecBoleConfig._convert_config_dict(None, dict(given))
    assert convert_values({"x": "7"}) == {"x": 7}


# ---------------------------------------------------------------------------------------------- resume


def test_a_resume_reads_its_checkpoint_once(monkeypatch, fast):
    """quick_start checks the checkpoint before the data is read and the trainer resumes from what it read."""
    first = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={**fast, "epochs": 1})
    reads, load = [], torch.load

    def counted(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    # saved=False: the test scores the last model, so no best checkpoint is read after training
    resumed = run_recbole_beta("BetaMultVAE", "ml-100k", config_dict={**fast, "epochs": 2}, resume=first["checkpoint"],
                               saved=False)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert reads == [str(first["checkpoint"])]


# ------------------------------------------------------------------------------------------ enable_amp


def test_the_amp_decision_takes_the_capability_as_an_argument():
    why = precision.amp_unavailable("cpu", cpu_bfloat16=False)
    assert why.startswith("enable_amp: ") and "\n" not in why and "stay float32" in why
    assert precision.amp_unavailable("cpu", cpu_bfloat16=True) is None
    assert precision.amp_unavailable(torch.device("cuda"), cpu_bfloat16=False) is None  # autocast's float16


@pytest.fixture(scope="module")
def multivae_with_amp(module_workdir):
    """RecBole's MultiVAE (a baseline: RecBole's Trainer), its config asking for enable_amp."""
    config = Config(model="MultiVAE", dataset="ml-100k", argv=[],
                    config_dict={"enable_amp": True, "state": "WARNING", "show_progress": False})
    _, _, model, trainer = prepare(config)
    return config, model, type(trainer)


@pytest.mark.parametrize("has_bfloat16", [False, True], ids=["no bfloat16", "bfloat16"])
def test_a_recbole_baseline_gets_enable_amp_only_where_the_cpu_runs_it(multivae_with_amp, monkeypatch, caplog,
                                                                        has_bfloat16):
    config, model, trainer_class = multivae_with_amp
    assert trainer_class.__name__ == "Trainer" and trainer_class is not BetaTrainer
    # the plugin's question to the CPU, answered here: this machine's own answer would test one branch only
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: has_bfloat16)
    with caplog.at_level(logging.WARNING):
        trainer = trainer_class(config, model)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("enable_amp")]
    assert trainer.enable_amp is has_bfloat16
    assert lines == ([] if has_bfloat16 else [precision.amp_unavailable("cpu", cpu_bfloat16=False)])
