"""After a non-editable `pip install .` (a wheel), the plugin finds its properties/ and runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SERIAL

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import recbole_beta, sys
from pathlib import Path
from recbole_beta.config import Config, properties_dir
site = Path(sys.argv[1]).resolve()
assert Path(recbole_beta.__file__).resolve().is_relative_to(site), recbole_beta.__file__
assert properties_dir().resolve() == site / "recbole_beta" / "properties", properties_dir()
config = Config(model="ScaledBetaMultVAE", dataset="ml-100k", config_dict={"state": "WARNING"})
assert config["valid_metric"] == "NDCG@100" and config["gamma"] == 0.005, config
assert config["topk"] == [20, 50, 100] and config["train_neg_sample_args"]["distribution"] == "none"
assert (properties_dir() / "hyper" / "ScaledBetaMultVAE.hyper").is_file()
print("installed-ok")
"""


@pytest.mark.slow
@SERIAL
def test_wheel_install_finds_properties_and_trains(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # no build isolation: build with the setuptools already installed, without the network
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    (wheel,) = wheels.glob("recbole_beta-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    assert not (site / "properties").exists()  # shipped inside the package, not as a top-level folder

    env = {**os.environ, "PYTHONPATH": str(site)}
    check = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)], cwd=work, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "installed-ok" in check.stdout

    run = subprocess.run(
        [sys.executable, "-m", "recbole_beta", "--model=CyclicalBetaMultVAE", "--epochs=1",
         "--show_progress=False", "--state=WARNING"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test result: {'recall@20'" in run.stdout
