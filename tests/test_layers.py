"""The layers of recbole_beta: no two parts import each other, however indirectly, and only the
experiments and the command lines import the experiments.

Read from the source with ``ast``, nothing imported: every ``import recbole_beta...`` and ``from
recbole_beta... import ...`` (or relative import), at module level and inside functions alike.
A part is a top-level module (``quick_start``, ``config``, ``registry``, ``trainer``, ``checkpoint``,
``files``, ...) or subpackage (``beta``, ``model``, ``data``, ``experiments``, ``tuning``, whether
``tuning.py`` or ``tuning/``). The command lines (``cli.py`` and ``__main__.py`` of any package)
sit above every part, so each is a node of its own: ``python -m recbole_beta.data export`` builds a
Config, which the data tools themselves never import.
"""

import ast
from pathlib import Path

PACKAGE = "recbole_beta"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
CLI_NAMES = ("cli", "__main__")


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
    """The layer a module belongs to: its top-level part, or the module itself for a command line."""
    parts = module.split(".")
    if parts[-1] in CLI_NAMES:
        return module
    return parts[1] if len(parts) > 1 else "__init__"


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


def test_the_graph_is_read():
    """Not vacuous: imports at module level and inside functions, and ``from package import module``."""
    edges = {(node_of(module), node_of(target)) for module, _, target in import_graph()}
    assert ("runs", "quick_start") in edges  # module level
    assert ("quick_start", "config") in edges
    assert ("recbole_beta.cli", "quick_start") in edges  # inside main()
    assert ("config", "metrics") in edges  # from recbole_beta import metrics
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None


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


def test_only_experiments_and_command_lines_import_experiments():
    experiments = f"{PACKAGE}.experiments"
    offenders = [
        f"{module} line {line} imports {target}"
        for module, line, target in import_graph()
        if (target == experiments or target.startswith(experiments + "."))
        and not (module == experiments or module.startswith(experiments + "."))
        and module.split(".")[-1] not in CLI_NAMES
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
    for name, path in module_names().items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        lines = (doc or "").splitlines()
        recbole_style = len(lines) > 2 and set(lines[1]) == {"#"}
        if not lines or not lines[0].strip() or (len(lines) > 1 and lines[1].strip() and not recbole_style):
            offenders.append(f"{path.relative_to(ROOT.parent)}: {lines[0] if lines else '(no docstring)'}")
    assert not offenders, "\n".join(offenders)
