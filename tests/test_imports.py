"""Every module of recbole_beta imports: the fast tier touches each one, however few of its tests run.

The modules are found with pkgutil (and, for a folder without ``__init__.py`` such as ``runs/``, which pkgutil's
walk does not enter, from the files); a ``__main__`` runs its command line when imported, so its imports are
checked instead: every name it imports exists.
"""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import recbole_beta

ROOT = Path(recbole_beta.__file__).resolve().parent


def every_module():
    """The package's modules: pkgutil's walk, and the modules of namespace folders it does not enter."""
    names = {info.name for info in pkgutil.walk_packages(recbole_beta.__path__, "recbole_beta.")}
    names.add("recbole_beta")
    for folder in sorted(p for p in ROOT.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        if not (folder / "__init__.py").exists():
            prefix = ".".join(["recbole_beta", *folder.relative_to(ROOT).parts]) + "."
            names |= {info.name for info in pkgutil.iter_modules([str(folder)], prefix)}
    return sorted(names)


def test_every_source_file_is_found():
    files = {".".join(["recbole_beta", *p.relative_to(ROOT).with_suffix("").parts]).removesuffix(".__init__")
             for p in ROOT.rglob("*.py")}
    assert set(every_module()) == files


@pytest.mark.parametrize("name", [m for m in every_module() if m.rpartition(".")[2] != "__main__"])
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", [m for m in every_module() if m.rpartition(".")[2] == "__main__"])
def test_command_line_launcher_imports_what_exists(name):
    path = ROOT.joinpath(*name.split(".")[1:]).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert imports, f"{name} imports nothing"
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{name}: {node.module} has no {alias.name}"
