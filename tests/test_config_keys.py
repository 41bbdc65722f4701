"""Config keys: a key neither RecBole nor the plugin knows (a typo) is warned about on the first lines of
the run, naming the closest known key; a key of the user's own still works; the known keys come from the
property files, so every key of properties/ is known."""

import re
import sys
from pathlib import Path

import pytest
import yaml

import recbole_beta
from recbole_beta.beta import STRATEGIES, BetaStrategy, register_strategy
from recbole_beta.cli import main
from recbole_beta.config import Config, known_keys, properties_dir, unknown_key_warnings
from recbole_beta.quick_start import run_recbole_beta

TYPO = "cycle_shap is not a config key RecBole or the plugin knows (did you mean 'cycle_shape'?)"


def test_a_typo_is_warned_about_before_the_config_dump(monkeypatch, capsys, caplog, tmp_path):
    args = ["--model=CyclicalBetaMultVAE", "--cycle_shap=cosine", "--epochs=1", "--state=INFO", "--show_progress=False"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *args])
    assert main(args) == 0
    capsys.readouterr()

    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(TYPO in message for message in warnings), warnings
    (log,) = (tmp_path / "log" / "CyclicalBetaMultVAE").glob("*.log")
    lines = log.read_text().splitlines()
    warned = next(i for i, line in enumerate(lines) if TYPO in line)
    dump = next(i for i, line in enumerate(lines) if "General Hyper Parameters" in line)
    assert warned < dump  # among the first lines, not lost after RecBole's config dump
    assert "WARNING" in lines[warned]


class OwnRate(BetaStrategy):
    """A user's own strategy, reading a key of its own (``rate``)."""

    @classmethod
    def from_config(cls, config, context):
        strategy = cls()
        strategy.rate = config["rate"]
        return strategy

    def value_at(self, step):
        return self.rate


@pytest.fixture
def own_strategy():
    register_strategy("own_rate")(OwnRate)
    yield
    STRATEGIES.pop("own_rate", None)


@pytest.mark.slow
def test_a_key_of_your_own_still_works_with_a_warning(caplog, own_strategy, fast):
    result = run_recbole_beta(
        "BetaMultVAE", "ml-100k", config_dict={**fast, "epochs": 1, "beta_strategy": "own_rate", "rate": 0.125}
    )
    assert result["history"][0]["beta"] == pytest.approx(0.125)  # the key reached the strategy
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(m.startswith("rate is not a config key RecBole or the plugin knows") for m in warnings), warnings


def test_every_key_of_the_property_files_is_known():
    props = properties_dir()
    files = [props / "overall.yaml", *sorted((props / "model").glob("*.yaml"))]
    keys = set()
    for file in files:
        keys.update(yaml.safe_load(file.read_text()) or {})
    assert {"beta_strategy", "cycle_shape", "gamma", "kl_target", "results_dir"} <= keys
    assert keys <= known_keys()
    assert unknown_key_warnings(sorted(keys)) == []
    # run_recbole_beta.py's own arguments reach RecBole's Config as keys too
    assert unknown_key_warnings(["resume", "nproc", "world_size", "ip", "port", "group_offset", "config_files"]) == []


def test_the_config_module_owns_the_known_keys():
    """spec.py and the tuning package take the known keys from config.py; no lower layer imports experiments/."""
    from recbole_beta.experiments import spec

    assert spec.known_keys is known_keys
    package = Path(recbole_beta.__file__).parent
    for path in [package / "config.py", *sorted((package / "tuning").glob("*.py"))]:
        assert "recbole_beta.experiments" not in path.read_text(), path.name


def test_run_hyper_warns_about_typos_in_fixed_keys_and_config_files(capsys, tmp_path):
    from recbole_beta.tuning import prepare_search

    config_file = tmp_path / "my.yaml"
    config_file.write_text("lerning_rate: 0.01\n")
    prepare_search("ScaledBetaMultVAE", "ml-100k", config_file_list=[str(config_file)],
                   fixed={"gama": 0.01, "epochs": 1})
    err = capsys.readouterr().err
    assert ("warning: lerning_rate is not a config key RecBole or the plugin knows (did you mean 'learning_rate'?)"
            in err)
    assert "warning: gama is not a config key RecBole or the plugin knows (did you mean 'gamma'?)" in err


def test_config_reads_the_argv_it_is_given_not_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["some_tool.py", "--gamma=0.9", "--epochs=7"])
    given = Config(model="ScaledBetaMultVAE", dataset="ml-100k", argv=["--gamma=0.5", "--out", "x"])
    assert given["gamma"] == 0.5 and given["epochs"] != 7  # only the given argv, and only --key=value
    nothing = Config(model="ScaledBetaMultVAE", dataset="ml-100k", argv=[])
    assert nothing["gamma"] != 0.9
    legacy = Config(model="ScaledBetaMultVAE", dataset="ml-100k")  # argv=None: RecBole's own reading
    assert legacy["gamma"] == 0.9 and legacy["epochs"] == 7


def test_no_module_assigns_sys_argv():
    """Callers that are not a command line pass argv to Config; nobody rewrites the process's."""
    root = Path(recbole_beta.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if re.search(r"^\s*sys\.argv\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert offenders == []
