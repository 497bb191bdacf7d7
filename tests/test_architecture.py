"""The layering rules, checked by reading the import statements (and one real import trace)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import TINY_MODEL

PKG = Path(__file__).resolve().parents[1] / "gptcli"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PKG.parent)): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _uses(imports: set[str], top: str) -> bool:
    return any(name == top or name.startswith(top + ".") for name in imports)


# --- import cycles -------------------------------------------------------------------------------
#
# A cycle hidden by a function-level import still ties the modules into one layer: neither can be
# read, tested or replaced without the other, and moving the import to the top level breaks
# start-up. So the graph below holds every import anywhere in a file (only those under
# ``if TYPE_CHECKING:`` are left out: they never run).

# Each entry is the set of modules of one cycle (a strongly connected component) that is allowed
# for now, because breaking it needs an edit in training.py, finetune/trainer.py,
# commands/train.py or commands/finetune.py, which the engine rewrite is replacing. Empty it as
# they go: test_known_cycles_still_exist says when an entry is stale.
KNOWN_CYCLES: set[frozenset[str]] = set()  # none: every import points down


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST):
    """Every import statement that can run, at any depth; ``if TYPE_CHECKING:`` bodies skipped."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _with_packages(importer: str, target: str, files: dict[str, str], *, explicit: bool = True) -> list[str]:
    """The modules of ours that importing ``target`` runs, as seen from ``importer``: ``target``
    itself (unless ``explicit`` is off) and every package above it that ``importer`` is not inside
    (one it is inside is already being imported, and it only asked for a module below)."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts))]
    mods = [m for m in above if not (importer == m or importer.startswith(m + "."))]
    mods += [target] if explicit and target != importer else []
    return [m for m in mods if m in files]


def import_graph(files: dict[str, str], packages: set[str]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: line of the first such import}, for the modules in ``files``
    (name -> source). ``packages`` are the names whose file is an ``__init__.py``.

    ``import a.b.c`` and ``from a.b.c import x`` also run the ``__init__.py`` of ``a`` and ``a.b``,
    so those count too. ``from a import b`` imports the module ``a.b`` when there is one, and the
    package ``a`` itself only for a name that is not a submodule. Relative imports resolve against
    the importer."""
    graph: dict[str, dict[str, int]] = {}
    for name, source in files.items():
        deps: dict[str, int] = {}
        for node in _runtime_imports(ast.parse(source)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets += _with_packages(name, alias.name, files)
            else:
                if node.level:
                    base = name.split(".") if name in packages else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                submodules = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in files]
                targets += _with_packages(name, module, files, explicit=len(submodules) < len(node.names))
                for sub in submodules:
                    targets += _with_packages(name, sub, files)
            for target in targets:
                deps[target] = min(deps.get(target, node.lineno), node.lineno)
        graph[name] = deps
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): every component of more than one module, or of one module
    that imports itself, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1 or v in graph[v]:
                        found.append(sorted(component))
    return sorted(found)


def cycle_chains(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """Readable cycles that together pass through every module of ``component``:
    ``a (line 3) -> b (line 9) -> a``, each line being where the module on its left imports the next."""
    members = set(component)
    chains, covered = [], set()
    for start in component:
        if start in covered:
            continue
        # the shortest way round from ``start`` back to itself, inside the component
        paths = {start: [start]}
        frontier, back = [start], None
        while frontier and back is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        back = paths[v]
                        break
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if back is not None:
                    break
            frontier = nxt
        cycle = back + [start]
        covered.update(cycle)
        chains.append(" -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {start}")
    return chains


def _gptcli_files() -> tuple[dict[str, str], set[str]]:
    paths = sorted(PKG.rglob("*.py"))
    files = {_module_name(p): p.read_text(encoding="utf-8") for p in paths}
    return files, {_module_name(p) for p in paths if p.name == "__init__.py"}


def _new_cycles(files: dict[str, str], packages: set[str]) -> str:
    """Each cycle not in KNOWN_CYCLES as readable chains, one a line ("" when there are none)."""
    graph = import_graph(files, packages)
    new = [c for c in strongly_connected(graph) if frozenset(c) not in KNOWN_CYCLES]
    return "\n".join(chain for c in new for chain in cycle_chains(graph, c))


def test_no_import_cycles():
    """Imports point downward: no module reaches itself again through any chain of imports,
    function-level ones included. The cycles in KNOWN_CYCLES are the only exceptions."""
    report = _new_cycles(*_gptcli_files())
    assert report == "", f"import cycles among gptcli modules (each 'line N' is where the import is):\n{report}"


def test_known_cycles_still_exist():
    """An allowed cycle that is gone (or has grown into a different one) leaves KNOWN_CYCLES."""
    found = {frozenset(c) for c in strongly_connected(import_graph(*_gptcli_files()))}
    stale = [sorted(c) for c in KNOWN_CYCLES if c not in found]
    assert stale == [], f"no longer a cycle as listed: remove from KNOWN_CYCLES: {stale}"


def test_the_import_graph_reads_every_form_of_import():
    files = {
        "p": "",
        "p.a": "def f():\n    from p import b\n",  # lazy, and `from package import module`
        "p.b": "import p.sub.c\n",  # also runs p/sub/__init__.py
        "p.sub": "from .c import X\n",  # relative, from a package's __init__
        "p.sub.c": "from ..a import f\nfrom p.sub import Y\n",  # relative; a name from the package
        "p.d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.a\nelse:\n    import p.b\n",
        "p.e": "import os\nfrom p import d, VERSION\n",  # p itself only for the name that is not a module
    }
    graph = import_graph(files, {"p", "p.sub"})
    assert graph["p.a"] == {"p.b": 2}
    assert graph["p.b"] == {"p.sub": 1, "p.sub.c": 1}
    assert graph["p.sub"] == {"p.sub.c": 1}
    assert graph["p.sub.c"] == {"p.a": 1, "p.sub": 2}
    assert graph["p.d"] == {"p.b": 5}
    assert graph["p.e"] == {"p": 2, "p.d": 2}


def test_the_cycle_finder_finds_every_cycle_and_names_it():
    graph = {
        "a": {"b": 1},
        "b": {"c": 2},
        "c": {"a": 3, "d": 4},
        "d": {},
        "e": {"e": 5},  # a module importing itself
        "f": {"g": 6},
        "g": {"f": 7, "h": 8},
        "h": {"g": 9},
        "i": {"a": 10},  # leads into a cycle without being part of one
    }
    assert strongly_connected(graph) == [["a", "b", "c"], ["e"], ["f", "g", "h"]]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []
    assert cycle_chains(graph, ["a", "b", "c"]) == ["a (line 1) -> b (line 2) -> c (line 3) -> a"]
    assert cycle_chains(graph, ["f", "g", "h"]) == ["f (line 6) -> g (line 7) -> f", "h (line 9) -> g (line 8) -> h"]
    assert cycle_chains(graph, ["e"]) == ["e (line 5) -> e"]


def test_a_new_lazy_import_cycle_fails_the_check():
    """The real check, fed this package with one function-level import added that closes a cycle."""
    files, packages = _gptcli_files()
    assert _new_cycles(files, packages) == ""
    files["gptcli.errors"] += "\n\ndef _late():\n    from gptcli import checkpoint\n"
    report = _new_cycles(files, packages)
    assert "gptcli.checkpoint (line " in report and "-> gptcli.errors (line " in report, report


def test_only_cli_and_console_know_the_terminal():
    offenders = [
        mod
        for mod, imports in _modules().items()
        if mod not in ("gptcli/cli.py", "gptcli/cli_options.py", "gptcli/console.py")
        and (_uses(imports, "typer") or _uses(imports, "rich"))
    ]
    assert offenders == []


def test_the_weights_library_never_imports_the_console_or_the_commands():
    offenders = [
        mod
        for mod, imports in _modules().items()
        if mod.startswith("gptcli/weights/")
        and (_uses(imports, "gptcli.console") or _uses(imports, "gptcli.commands") or _uses(imports, "gptcli.cli"))
    ]
    assert offenders == []


def test_the_library_never_imports_the_command_layer():
    """Imports point downward: only cli.py reaches the commands, and only ``python -m gptcli``
    reaches cli.py."""
    modules = _modules()
    assert [m for m, imports in modules.items() if _uses(imports, "gptcli.cli")] == ["gptcli/__main__.py"]
    below = [m for m in modules if not m.startswith(("gptcli/commands/", "gptcli/cli.py"))]
    assert [m for m in below if _uses(modules[m], "gptcli.commands")] == []


def test_sampling_imports_neither_the_trainer_nor_the_token_cache(tmp_path):
    from gptcli import checkpoint
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    cfg = ModelConfig(**TINY_MODEL)
    torch.manual_seed(0)
    path = checkpoint.atomic_save(checkpoint.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "m.pth")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gptcli", "sample", "-c", str(path), "--max-new-tokens", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "gptcli.inference" in imported and "gptcli.model" in imported  # the trace is real
    assert "gptcli.training" not in imported
    assert "gptcli.tokencache" not in imported
