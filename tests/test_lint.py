"""The one linter: ``ruff check`` over the repository passes, with the rules and the few per-file exceptions
that pyproject.toml's ``[tool.ruff]`` names."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff():
    """ruff from the test extra: beside this Python (the venv's bin/), else on the PATH."""
    beside = Path(sys.executable).parent / "ruff"
    return str(beside) if beside.exists() else shutil.which("ruff")


def test_ruff_passes():
    assert ruff(), "ruff is not installed: pip install -e '.[test]'"
    done = subprocess.run([ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
