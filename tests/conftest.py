"""Shared fixtures: every test runs in its own working directory (RecBole writes log/, saved/ there)."""

import sys

import pytest

#: settings that keep an ml-100k run to seconds; everything else is the plugin's defaults
FAST = {"epochs": 3, "show_progress": False, "state": "WARNING"}


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Run in tmp_path, with a bare sys.argv: RecBole's Config reads --key=value from sys.argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    return tmp_path


@pytest.fixture
def fast():
    return dict(FAST)


def write_tiny_dataset(root, name="tiny"):
    """A 4-user, 6-item implicit dataset in RecBole's atomic format; returns the config keys to load it."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "u1": ["i1", "i2", "i3", "i4", "i5"],
        "u2": ["i2", "i3", "i6"],
        "u3": ["i1", "i4", "i5", "i6"],
        "u4": ["i1", "i2", "i3", "i4", "i5", "i6"],
    }
    lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, items in rows.items() for i in items]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return {
        "data_path": str(root),
        "dataset": name,
        "load_col": {"inter": ["user_id", "item_id"]},
        # everything in training: the loss test needs every user's whole row
        "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "group_by": "user", "order": "RO", "mode": "full"},
    }


def run_cli(monkeypatch, capsys, *args):
    """Run the CLI as `python run_recbole_beta.py ARGS` (RecBole's Config reads sys.argv); return
    (exit code, stderr stripped, stdout)."""
    from recbole_beta.cli import main

    argv = ["--state=WARNING", "--show_progress=False", *args]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *argv])
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def plain_tables(text):
    """``text`` with each Markdown table row written as ``| a | b |``: the reports' tables come from pandas'
    ``to_markdown``, which pads every cell to its column's width."""
    return "\n".join("| " + " | ".join(cell.strip() for cell in line.strip()[1:-1].split("|")) + " |"
                     if line.startswith("|") else line for line in text.splitlines())
