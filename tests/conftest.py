"""Shared fixtures and helpers: every test runs in its own working directory (RecBole writes log/, saved/
there), module-scoped fixtures too; the two tiers (``--full`` adds the tests marked ``slow``)."""

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

#: settings that keep an ml-100k run to seconds; everything else is the plugin's defaults
FAST = {"epochs": 3, "show_progress": False, "state": "WARNING"}

#: the same for a sweep's spec (a sweep's runs print no progress bar of their own) and for a search's trials
SWEEP_FAST = {"epochs": 2, "state": "WARNING"}
SEARCH_FAST = {"epochs": 1, "show_progress": False, "state": "WARNING", "eval_batch_size": 1 << 20}

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- the two tiers


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the whole suite: the tests marked slow too (the default is the fast tier)")


def pytest_report_header(config):
    if not config.getoption("--full"):
        return "the fast tier: tests marked slow are deselected (--full runs them)"


#: the xdist group of the tests that start processes of their own (Ray, DDP, process pools, pip): one at a time
SERIAL = pytest.mark.xdist_group("serial")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The fast tier by default: tests marked ``slow`` are deselected unless ``--full`` is given.

    Under pytest-xdist's ``--dist loadgroup``, a test that uses a module-scoped fixture (a sweep, a trained
    model) is grouped with its file, so the fixture is built once, on one worker; a test with a group of its own
    (:data:`SERIAL`) keeps it."""
    if not config.getoption("--full"):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if item.get_closest_marker("xdist_group") or info is None:
            continue
        if any(d.scope in ("class", "module", "package") for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


# ---------------------------------------------------------------------------------------- working folders


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Run in tmp_path, with a bare sys.argv: RecBole's Config reads --key=value from sys.argv."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    return tmp_path


@pytest.fixture(scope="module")
def module_workdir(tmp_path_factory):
    """The working folder of a module-scoped fixture (a temporary one, not the folder pytest started in: RecBole
    writes log/ and saved/ where it runs), with a bare sys.argv, for as long as the module's tests run."""
    folder = tmp_path_factory.mktemp("module-work")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["pytest"])
        yield folder


@pytest.fixture
def fast():
    return dict(FAST)


def refuse_data(monkeypatch, why="the dataset was read"):
    """Make any read of a dataset (RecBole's or the held-out-user split's) fail the test with ``why``."""
    from recbole_beta import quick_start

    def refuse(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(quick_start, "create_dataset", refuse)
    monkeypatch.setattr(quick_start, "HeldOutDataset", refuse)


@pytest.fixture
def no_data(monkeypatch):
    """Any read of a dataset fails the test: what must fail, fails before the data is read."""
    refuse_data(monkeypatch)


def as_args(config):
    """A config dict as a command line's ``--key=value`` arguments."""
    return [f"--{key}={value}" for key, value in config.items()]


def source_copy(root):
    """A copy of the package's source (``recbole_beta/`` and ``properties/``) under ``root``, to drop a probe
    module into: put ``root`` first on the path (``probe_env``) and the copy is the package imported."""
    shutil.copytree(REPO / "recbole_beta", root / "recbole_beta", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "properties", root / "properties", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_python(code, cwd, path_first=(), args=(), timeout=600):
    """``python -c code args...`` in ``cwd`` with ``path_first`` ahead of everything on its path; the finished
    process, its output captured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path_first), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------- reference formulas


def ease_weights(X, reg):
    """EASE's item-item weights from the definition (Steck, WWW 2019): P = (X^T X + reg I)^-1, B = -P / diag(P),
    diag(B) = 0. ``X``: users x items, dense or scipy sparse."""
    G = X.T @ X
    G = (G.toarray() if hasattr(G, "toarray") else np.asarray(G, dtype=float)) + reg * np.eye(X.shape[1])
    P = np.linalg.inv(G)
    B = P / -np.diag(P)
    np.fill_diagonal(B, 0.0)
    return B


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


def drawn_text(svg):
    """Every string the SVG file ``svg`` draws, in drawing order: matplotlib writes a comment before each
    text it draws as paths (its default) and a <text> element under svg.fonttype none; a text of several
    lines gives one string per line (a comment writes "--" as "- -")."""
    found = re.findall(r"<!-- (.*?) -->|<text\b[^>]*>(.*?)</text>", Path(svg).read_text(encoding="utf-8"),
                       flags=re.S)
    return [html.unescape(comment or text) for comment, text in found]
