"""The layers of recbole_beta: imports only go down, and no two parts import each other, however indirectly.

The order is declared once, in the README's Architecture table (its ``parts`` column, top layer first), and read
from there. The imports are read from the source with ``ast``, nothing imported: every ``import recbole_beta...``
and ``from recbole_beta... import ...`` (or relative import), at module level and inside functions alike.
A part is a top-level module (``quick_start``, ``config``, ``registry``, ``trainer``, ``checkpoint``, ``files``,
...) or subpackage (``beta``, ``model``, ``data``, ``experiments``, ``tuning``, ``runs``). A subpackage's
``__main__`` belongs to its subpackage like any module of it (so ``data/__main__.py`` importing the data tools'
command line would be data importing the top layer, a circle); only the package's own ``recbole_beta/__main__.py``
is a command line of the top layer. Command lines sit at the top: argparse is imported there and in the two
studies' ``cli.py`` only.
"""

import ast
import re
from pathlib import Path

PACKAGE = "recbole_beta"
REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / PACKAGE
MAIN = "__main__"


def module_names():
    """Module name -> source path for every module of the package."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported(name, path, modules):
    """The package's modules ``name`` (at ``path``) imports, with the line of each import."""
    is_package = path.name == "__init__.py"
    found = []

    def resolve(target):
        # the module itself if it is one of ours, else the closest enclosing one (a name in a module)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                resolved = resolve(target)
                if resolved and resolved != name and (resolved, node.lineno) not in found:
                    found.append((resolved, node.lineno))
    return found


def node_of(module):
    """The part a module belongs to: its top-level module or subpackage (``__init__`` for the package itself);
    a subpackage's ``__main__`` is its subpackage's, the package's own ``__main__`` the top layer's."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def declared_layers(readme=REPO / "README.md"):
    """The README's Architecture table, top layer first: [(layer, [part, ...]), ...]; a part is written as
    `name.py` or `name/` (``__main__.py`` standing for every ``__main__`` module)."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    layer_column, parts_column = header.index("layer"), header.index("parts")
    layers = []
    for row in rows[2:]:  # after the header and its rule
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[parts_column])
        layers.append((cells[layer_column], [re.sub(r"(\.py|/)$", "", name) for name in names]))
    return layers


def layer_index():
    """Part -> its layer's position (0 the top), from the README; ``__main__`` for every ``__main__`` module."""
    index = {}
    for position, (layer, parts) in enumerate(declared_layers()):
        for part in parts:
            assert part not in index, f"{part} is in two layers of the README's table (the second: {layer})"
            index[part] = position
    return index


def layer_of(node, index):
    return index.get(node)


def import_graph():
    """(module, line, imported module) for every import of one of the package's modules."""
    modules = module_names()
    return [(name, line, target) for name, path in modules.items() for target, line in imported(name, path, modules)]


def find_cycle(edges):
    """A cycle of the directed graph ``edges`` (node -> set of nodes) as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_and_the_table_are_read():
    """Not vacuous: imports at module level and inside functions, ``from package import module``; the table's
    layers in order."""
    edges = {(node_of(module), node_of(target)) for module, _, target in import_graph()}
    assert ("runs", "quick_start") in edges  # module level
    assert ("quick_start", "config") in edges
    assert ("cli", "quick_start") in edges  # inside main()
    assert ("config", "metrics") in edges  # from recbole_beta import metrics
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None
    index = layer_index()
    assert index[MAIN] == index["cli"] == 0
    assert index["experiments"] < index["tuning"] < index["runs"] < index["quick_start"] < index["config"]
    assert index["config"] < index["model"]
    assert index["model"] < index["data"] < index["beta"] < index["errors"]


def test_every_part_has_a_layer():
    index = layer_index()
    missing = sorted({node for node in map(node_of, module_names()) if layer_of(node, index) is None})
    assert not missing, f"parts the README's Architecture table does not place: {missing}"
    stale = sorted(set(index) - set(map(node_of, module_names())))
    assert not stale, f"parts in the README's Architecture table that are not in the package: {stale}"


def test_imports_only_go_down():
    """No part imports a part of a higher layer: module level and inside functions alike."""
    index = layer_index()
    upward = [
        f"{module} line {line} imports {target} ({node_of(module)} is below {node_of(target)})"
        for module, line, target in import_graph()
        if layer_of(node_of(module), index) is not None and layer_of(node_of(target), index) is not None
        and layer_of(node_of(module), index) > layer_of(node_of(target), index)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_upward_imports_are_seen(tmp_path):
    """The check above finds a lazy upward import: a made-up module of data/ whose function imports config."""
    index = layer_index()
    probe = tmp_path / "probe.py"
    probe.write_text("def export():\n    from recbole_beta.config import Config\n    return Config\n")
    names = [target for target, _ in imported("recbole_beta.data.probe", probe, module_names())]
    assert names == ["recbole_beta.config"]
    assert layer_of(node_of("recbole_beta.data.probe"), index) > layer_of(node_of(names[0]), index)


def test_a_subpackages_main_is_of_its_subpackage(tmp_path):
    """A ``data/__main__.py`` that launched the data tools' command line (as one did) is data importing the top
    layer: upward, and with the command line's own imports of config -> registry -> model -> data, a circle."""
    index = layer_index()
    launcher = tmp_path / "__main__.py"
    launcher.write_text("import sys\n\nfrom recbole_beta.data_cli import main\n\nsys.exit(main())\n")
    names = [target for target, _ in imported("recbole_beta.data.__main__", launcher, module_names())]
    assert names == ["recbole_beta.data_cli"]
    assert node_of("recbole_beta.data.__main__") == "data" and node_of("recbole_beta.__main__") == MAIN
    assert layer_of("data", index) > layer_of(node_of(names[0]), index)
    edges = {}
    for module, _, target in import_graph() + [("recbole_beta.data.__main__", 1, "recbole_beta.data_cli")]:
        if node_of(module) != node_of(target):
            edges.setdefault(node_of(module), set()).add(node_of(target))
    assert "data" in find_cycle(edges)


def test_command_lines_sit_at_the_top():
    """argparse is read by the top layer's command lines and the two studies' ``cli.py`` only: a module of a lower
    layer with a parser of its own (``python -m recbole_beta.checkpoint ...``, as there was) is a command line
    out of place."""
    index = layer_index()
    offenders = []
    for name, path in module_names().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reads_argparse = any(
            (isinstance(node, ast.Import) and any(alias.name == "argparse" for alias in node.names))
            or (isinstance(node, ast.ImportFrom) and node.module == "argparse")
            for node in ast.walk(tree)
        )
        if reads_argparse and layer_of(node_of(name), index) != 0 and name.split(".")[-1] != "cli":
            offenders.append(name)
    assert not offenders, f"command lines below the top layer: {offenders}"


def test_no_two_parts_import_each_other():
    edges, where = {}, {}
    for module, line, target in import_graph():
        source, sink = node_of(module), node_of(target)
        if source != sink:
            edges.setdefault(source, set()).add(sink)
            where.setdefault((source, sink), f"{module} line {line} imports {target}")
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between parts: " + " -> ".join(cycle) + "\n" + "\n".join(
        where[pair] for pair in zip(cycle, cycle[1:])
    )


def test_nothing_imports_a_command_line():
    """A ``__main__`` is run by ``python -m``, never imported; the other command lines are imported by command
    lines only (and by tests)."""
    index = layer_index()
    offenders = [
        f"{module} line {line} imports {target}"
        for module, line, target in import_graph()
        if target.split(".")[-1] == MAIN
        or (layer_of(node_of(target), index) == 0 and layer_of(node_of(module), index) != 0)
    ]
    assert not offenders, "\n".join(offenders)


def test_only_experiments_and_command_lines_import_experiments():
    index = layer_index()
    experiments = f"{PACKAGE}.experiments"
    offenders = [
        f"{module} line {line} imports {target}"
        for module, line, target in import_graph()
        if (target == experiments or target.startswith(experiments + "."))
        and node_of(module) != "experiments" and layer_of(node_of(module), index) != 0
    ]
    assert not offenders, "\n".join(offenders)


def module_edges():
    """Module -> the modules it imports (module level and inside functions alike), and where."""
    edges, where = {}, {}
    for module, line, target in import_graph():
        if module != target:
            edges.setdefault(module, set()).add(target)
            where.setdefault((module, target), f"{module} line {line} imports {target}")
    return edges, where


def test_no_two_modules_import_each_other():
    """Within a part too: a cycle of modules (runner -> parallel -> runner, say) is a cycle, lazy imports
    counted; a package's ``__init__`` re-exporting its modules is an edge like any other."""
    edges, where = module_edges()
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle) + "\n" + "\n".join(
        where[pair] for pair in zip(cycle, cycle[1:])
    )


def test_the_module_graph_sees_lazy_imports():
    edges, _ = module_edges()
    assert "recbole_beta.quick_start" in edges["recbole_beta.cli"]  # inside main()
    assert find_cycle({"x.a": {"x.b"}, "x.b": {"x.a"}}) == ["x.a", "x.b", "x.a"]


def test_every_module_opens_with_one_line_saying_what_it_holds():
    """A docstring whose first line is the summary (then a blank line, or nothing); a model file may open in
    RecBole's style instead (its name, then a rule of #), as RecBole's model files do."""
    offenders = []
    for path in module_names().values():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        lines = (doc or "").splitlines()
        recbole_style = len(lines) > 2 and set(lines[1]) == {"#"}
        if not lines or not lines[0].strip() or (len(lines) > 1 and lines[1].strip() and not recbole_style):
            offenders.append(f"{path.relative_to(ROOT.parent)}: {lines[0] if lines else '(no docstring)'}")
    assert not offenders, "\n".join(offenders)
