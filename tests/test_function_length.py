"""Small functions: no function or method of the package runs over 80 lines (its ``def`` to its last line,
decorators, docstring and comments included), read from the source with ``ast``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "recbole_beta"

#: the most lines a function may take
LIMIT = 80


def long_functions(root=ROOT, limit=LIMIT):
    """``path:line name (n lines)`` for every function (nested ones too) of the modules under ``root`` longer
    than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_over_80_lines():
    too_long = long_functions()
    assert not too_long, "split by what each part does: " + "; ".join(too_long)


def test_the_walk_finds_a_long_function(tmp_path):
    """Not vacuous: a function of 81 lines (a decorated method, nested in a class) is found, one of 80 is not."""
    body = "\n".join(f"        x{i} = {i}" for i in range(78))
    (tmp_path / "module.py").write_text(
        f"class A:\n    @staticmethod\n    def long():\n{body}\n        return x0\n\n"
        f"def fits():\n{body}\n        return 0\n", encoding="utf-8")
    found = long_functions(tmp_path)
    assert len(found) == 1 and "long (81 lines)" in found[0], found
