"""``convert-checkpoint`` reads RecBole 1.2.1's checkpoints as data and runs nothing a file names.

A crafted file that would call something while it is read (RecBole's Config with settings RecBole evals, a
recbole function or trainer, a model class, a Config whose saved state hides such a call) is refused in one
line naming the global, and its side effect never happens; data RecBole never saves fails in one line too.
RecBole's own checkpoints (MultiVAE; EASE and ItemKNN with numpy and scipy matrices) convert as before: the
config plain() makes of the settings the full unpickler reads, the same weights and matrices; a run resumes."""

import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recbole_beta.model
from recbole_beta.checkpoint import decode, load_checkpoint
from recbole_beta.cli import main
from recbole_beta.compat import init_logger
from recbole_beta.files import plain
from recbole_beta.quick_start import run_recbole_beta
from recbole_beta.recbole_pickles import convertible, load_recbole_checkpoint, pickled_globals

CONFIG = "recbole.config.configurator.Config"


class Global:
    """A global named by its module path, pickled as GLOBAL without importing it."""

    def __init__(self, path):
        self.module, _, self.name = path.rpartition(".")

    def __call__(self, *args):  # pickle's save_reduce wants a callable
        raise AssertionError("only ever pickled")


class Call:
    """Pickles as ``path(*args)``: the global is called (REDUCE) while the file is read; given ``state``, what
    it returns is then filled with it (BUILD)."""

    def __init__(self, path, *args, state=None):
        self.path, self.args, self.state = path, args, state

    def __reduce__(self):
        return (Global(self.path), self.args) if self.state is None else (Global(self.path), self.args, self.state)


class Build:
    """Pickles as ``path.__new__(path)`` filled by ``__setstate__(state)`` (NEWOBJ, BUILD): RecBole's Config's way."""

    def __init__(self, path, state):
        self.path, self.state = path, state


class Patch:
    """Pickles as the global ``path`` itself given the attributes ``attrs`` (BUILD with a slot state)."""

    def __init__(self, path, attrs):
        self.path, self.attrs = path, attrs


class CraftingPickler(pickle._Pickler):
    """Python's pickler, writing :class:`Global`, :class:`Build` and :class:`Patch` as their opcodes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_named_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def save_build(self, obj):
        self.save(Global(obj.path))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.save(obj.state)
        self.write(pickle.BUILD)

    def save_patch(self, obj):
        self.save(Global(obj.path))
        self.save((None, obj.attrs))
        self.write(pickle.BUILD)

    dispatch[Global] = save_named_global
    dispatch[Build] = save_build
    dispatch[Patch] = save_patch


CRAFTING = types.ModuleType("crafting_pickle")
CRAFTING.Pickler = CraftingPickler


def settings(**extra):
    return {"final_config_dict": {"model": "MultiVAE", "dataset": "ml-100k", **extra}, "external_config_dict": {}}


def checkpoint(config=None, **extra):
    """A RecBole-shaped checkpoint: every key convert-checkpoint reads, valid, plus ``extra``."""
    config = Build(CONFIG, settings()) if config is None else config
    return {"config": config, "epoch": 0, "cur_step": 0, "best_valid_score": 0.0, "state_dict": OrderedDict(),
            "other_parameter": {}, "optimizer": None, **extra}


def evals(marker):
    """A setting RecBole's Config evals (``_convert_config_dict``): it creates ``marker``."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def trainer_settings(marker):
    """What RecBole's Trainer reads before it creates its ``checkpoint_dir`` (``marker``)."""
    return settings(single_spec=True, log_wandb=False, epochs=1, eval_step=1, valid_metric="MRR@10",
                    checkpoint_dir=str(marker))


PROBE = '''
import pathlib
pathlib.Path({imported!r}).touch()


class SideEffectModel:
    def __init__(self, *args):
        pathlib.Path({called!r}).touch()


def side_effect(*args):
    pathlib.Path({called!r}).touch()
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A module with side effects on import and on construction, in a temporary folder searched both as a
    top-level module (sys.path) and as a submodule of recbole_beta.model (that package's __path__)."""
    folder = tmp_path / "probe"
    folder.mkdir()
    markers = tmp_path / "probe-imported", tmp_path / "probe-called"
    (folder / "probe_side_effects.py").write_text(PROBE.format(imported=str(markers[0]), called=str(markers[1])))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(recbole_beta.model, "__path__", [*recbole_beta.model.__path__, str(folder)])
    for name in ("probe_side_effects", "recbole_beta.model.probe_side_effects"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return markers


#: route -> (the global the refusal names, the crafted checkpoint given the marker it must never create)
ROUTES = {
    "Config evals its settings": (CONFIG, lambda m: checkpoint(
        Call(CONFIG, "MultiVAE", "ml-100k", None, {"x": evals(m)}))),
    "Config's state hides a Config call": (CONFIG, lambda m: checkpoint(Build(CONFIG, settings(
        x=Call(CONFIG, "MultiVAE", "ml-100k", None, {"x": evals(m)}))))),
    "Config changed, then called": (CONFIG, lambda m: {
        "patch": Patch(CONFIG, {"_call": Global("builtins.object")}),
        **checkpoint(Call(CONFIG, "MultiVAE", "ml-100k", None, {"x": evals(m)}))}),
    "Config's state hides a recbole function": ("recbole.utils.utils.ensure_dir", lambda m: checkpoint(
        Build(CONFIG, settings(x=Call("recbole.utils.utils.ensure_dir", str(m)))))),
    "a recbole function": ("recbole.utils.utils.ensure_dir",
                           lambda m: checkpoint(extra=Call("recbole.utils.utils.ensure_dir", str(m)))),
    "RecBole's Trainer": ("recbole.trainer.trainer.Trainer", lambda m: checkpoint(
        extra=Call("recbole.trainer.trainer.Trainer", Build(CONFIG, trainer_settings(m)), None))),
    "a RecBole model class": ("recbole.model.general_recommender.multivae.MultiVAE", lambda m: checkpoint(
        extra=Call("recbole.model.general_recommender.multivae.MultiVAE", Build(CONFIG, settings()), None))),
    "a RecBole layer": ("recbole.model.layers.MLPLayers",
                        lambda m: checkpoint(extra=Call("recbole.model.layers.MLPLayers", [2, 2]))),
    "a scipy matrix called": ("scipy.sparse._csr.csr_matrix",
                              lambda m: checkpoint(extra=Call("scipy.sparse._csr.csr_matrix", (2, 2)))),
    "yaml's loader called": ("yaml.loader.FullLoader",
                             lambda m: checkpoint(extra=Call("yaml.loader.FullLoader", "a: 1"))),
    "an enum made from two values": ("recbole.utils.enum_type.ModelType", lambda m: checkpoint(
        extra=Call("recbole.utils.enum_type.ModelType", "X", "A B"))),
}


def convert(capsys, source):
    """``python -m recbole_beta convert-checkpoint SOURCE converted.pth``: exit status, stderr."""
    target = source.parent / "converted.pth"
    code = main(["convert-checkpoint", str(source), str(target)])
    return code, capsys.readouterr().err.strip()


def refused(code, err, source, name):
    """The conversion failed in one line naming ``name``, and wrote nothing."""
    assert code == 2, err
    assert err.startswith(f"recbole-beta: cannot convert {source}: "), err
    assert name in err and "\n" not in err and "Traceback" not in err, err
    assert "nothing in it was run" in err
    assert not (source.parent / "converted.pth").exists()


def write(payload, path, layout):
    if layout == "torch":
        torch.save(payload, path, pickle_module=CRAFTING, pickle_protocol=4)
    else:
        with open(path, "wb") as file:
            CraftingPickler(file, protocol=4).dump(payload)
    return path


@pytest.mark.parametrize("layout", ["torch", "pickle"])
@pytest.mark.parametrize("route", list(ROUTES))
def test_a_crafted_checkpoint_is_refused_and_nothing_runs(capsys, tmp_path, route, layout):
    name, build = ROUTES[route]
    marker = tmp_path / "marker"
    path = write(build(marker), tmp_path / "crafted.pth", layout)
    assert tuple(name.rsplit(".", 1)) in pickled_globals(path)
    code, err = convert(capsys, path)
    assert not marker.exists(), err
    refused(code, err, path, name)


@pytest.mark.parametrize("called", ["SideEffectModel", "side_effect"])
@pytest.mark.parametrize("module", ["probe_side_effects", "recbole_beta.model.probe_side_effects"])
def test_a_class_or_function_with_side_effects_is_neither_imported_nor_called(capsys, tmp_path, probe, module,
                                                                               called):
    name = f"{module}.{called}"
    path = write(checkpoint(extra=Call(name, Build(CONFIG, settings()), None)), tmp_path / "crafted.pth", "torch")
    code, err = convert(capsys, path)
    assert not any(marker.exists() for marker in probe), err
    assert module not in sys.modules
    refused(code, err, path, name)


def test_a_config_named_only_as_the_models_class_is_not_called(capsys, tmp_path, probe):
    """A Config's model_class is stored, never instantiated: a file that builds one through pickle's NEWOBJ
    is refused too."""
    name = "recbole_beta.model.probe_side_effects.SideEffectModel"
    path = write(checkpoint(extra=Build(name, {})), tmp_path / "crafted.pth", "pickle")
    code, err = convert(capsys, path)
    assert not any(marker.exists() for marker in probe), err
    refused(code, err, path, name)


@pytest.fixture(scope="module")
def recbole_checkpoints(tmp_path_factory):
    """Checkpoints RecBole 1.2.1 writes itself: its MultiVAE, EASE (a numpy matrix and a csr matrix in
    other_parameter) and ItemKNN (csc and lil matrices), one epoch each on ml-100k, by its own trainers."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    folder = tmp_path_factory.mktemp("recbole_checkpoints")
    here, argv = os.getcwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["pytest"]
    paths = {}
    try:
        for model in ("MultiVAE", "EASE", "ItemKNN"):
            config = Config(model=model, dataset="ml-100k", config_dict={
                "epochs": 1, "train_neg_sample_args": None, "state": "WARNING", "show_progress": False,
                "checkpoint_dir": str(folder / model), "eval_batch_size": 1 << 22,
            })
            init_seed(config["seed"], config["reproducibility"])
            init_logger(config)
            train, valid, _ = data_preparation(config, create_dataset(config))
            trainer = get_trainer(config["MODEL_TYPE"], model)(config, get_model(model)(config, train._dataset))
            trainer.fit(train, valid, saved=True, show_progress=False)  # saving is RecBole's own code
            paths[model] = trainer.saved_model_file
    finally:
        os.chdir(here)
        sys.argv = argv
    return paths


def trusted(path):
    """The test's own file read by the full unpickler: what today's conversion read."""
    return torch.load(path, weights_only=False)


def same(a, b):
    if sp.issparse(a):
        return sp.issparse(b) and a.format == b.format and a.shape == b.shape and (a != b).nnz == 0
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [4, 2])  # 4: RecBole's; 2: torch.save's default, on a file saved again
@pytest.mark.parametrize("model", ["MultiVAE", "EASE", "ItemKNN"])
def test_recboles_own_checkpoint_converts_as_before(capsys, tmp_path, recbole_checkpoints, model, protocol):
    source = recbole_checkpoints[model]
    original = trusted(source)
    if protocol != 4:
        source = tmp_path / "saved-again.pth"
        torch.save(original, source, pickle_protocol=protocol)
    assert all(convertible(module, name) for module, name in pickled_globals(source))
    out = tmp_path / "converted.pth"
    assert main(["convert-checkpoint", str(source), str(out)]) == 0, capsys.readouterr().err
    state = load_checkpoint(out)  # torch's safe loader reads it
    assert state["config"] == plain(dict(original["config"].final_config_dict))
    assert state["config"]["MODEL_TYPE"] == original["config"]["MODEL_TYPE"].__str__()
    assert state["config_overrides"] == plain(dict(original["config"].external_config_dict))
    assert state["epoch"] == original["epoch"] and list(state["state_dict"]) == list(original["state_dict"])
    assert all(torch.equal(state["state_dict"][k], v) for k, v in original["state_dict"].items())
    other = decode(state["other_parameter"])
    assert set(other) == set(original["other_parameter"])
    assert all(same(original["other_parameter"][k], v) for k, v in other.items())


@pytest.mark.slow
def test_eases_converted_checkpoint_resumes(tmp_path, recbole_checkpoints, fast):
    out = tmp_path / "converted.pth"
    assert main(["convert-checkpoint", recbole_checkpoints["EASE"], str(out)]) == 0
    resumed = run_recbole_beta("EASE", "ml-100k", config_dict={**fast, "epochs": 1}, resume=str(out))
    assert 0 < resumed["test_result"]["ndcg@100"] <= 1


def test_scipys_matrices_are_rebuilt_by_scipy_from_their_arrays(tmp_path):
    dense = np.array([[0, 1.5, 0], [2, 0, 0], [0, 0, 3]], dtype=np.float32)
    matrices = {fmt: sp.csr_matrix(dense).asformat(fmt) for fmt in ("csr", "csc", "coo", "lil")}
    for protocol in (4, 2):
        torch.save(matrices, tmp_path / "matrices.pth", pickle_protocol=protocol)
        loaded = load_recbole_checkpoint(tmp_path / "matrices.pth")
        assert all(same(matrices[fmt], loaded[fmt]) and loaded[fmt].dtype == np.float32 for fmt in matrices)


BAD_DATA = {
    "a matrix scipy would read out of bounds": (
        "not a matrix scipy rebuilds", lambda: Build("scipy.sparse._csr.csr_matrix", {
            "_shape": (2, 2), "data": np.ones(1), "indices": np.array([7]), "indptr": np.array([0, 1, 1])})),
    "an enum value RecBole has not": (
        "recbole.utils.enum_type.ModelType value 99 is none of RecBole's",
        lambda: Call("recbole.utils.enum_type.ModelType", 99)),
    "an array of Python objects": ("an array of Python objects", lambda: np.array([{}, []], dtype=object)),
    "an object that is no data": ("objects other than settings, tensors and arrays", lambda: Call("builtins.object")),
    "an enum changed after it is made": ("is not saved as RecBole saves an enum", lambda: Call(
        "recbole.utils.enum_type.ModelType", 1, state=(None, {"name": "recbole.utils.enum_type.__builtins__"}))),
    "a Config without settings": ("holds no settings", lambda: Build(CONFIG, {"final_config_dict": "x"})),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_what_recbole_never_saves_fails_in_one_line(capsys, tmp_path, case):
    message, value = BAD_DATA[case]
    path = write(checkpoint(other_parameter={"x": value()}), tmp_path / "odd.pth", "torch")
    code, err = convert(capsys, path)
    assert code == 2 and err.startswith(f"recbole-beta: cannot convert {path}: ") and message in err, err
    assert "\n" not in err and not (tmp_path / "converted.pth").exists()


@pytest.mark.slow
def test_a_target_that_cannot_be_written_is_one_line(capsys, tmp_path, recbole_checkpoints):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" / "out.pth"
    assert main(["convert-checkpoint", recbole_checkpoints["MultiVAE"], str(target)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot write {target}" in err and "Traceback" not in err
    assert not target.exists()
