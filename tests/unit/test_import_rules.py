"""The layering rules of DESIGN.md, checked on the source: what each part may import,
no import cycles, and no import of a higher layer."""

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0] if not node.module.startswith("genalign.") else node.module)
    return names


def files(folder: str) -> list[Path]:
    found = sorted((ROOT / folder).rglob("*.py"))
    assert found, folder
    return found


@pytest.mark.parametrize("path", files("src/genalign"), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_kfp_at_module_level(path):
    names = module_imports(path, top_level_only=True)
    assert "kfp" not in names
    if path.name != "cli.py":
        assert not {"kfp", "pipelines", "components"} & module_imports(path, top_level_only=False)


@pytest.mark.parametrize("path", files("src/genalign/config"), ids=lambda p: p.name)
def test_config_never_imports_torch(path):
    assert "torch" not in module_imports(path, top_level_only=False)


@pytest.mark.parametrize("path", files("src/genalign/losses"), ids=lambda p: p.name)
def test_losses_import_only_torch(path):
    allowed = {"torch", "__future__", "typing", "math", "genalign.losses", "dataclasses"}
    names = {n for n in module_imports(path, top_level_only=False)}
    assert names <= allowed | {n for n in names if n.startswith("genalign.losses")}, names


@pytest.mark.parametrize("path", files("components"), ids=lambda p: p.name)
def test_components_import_only_kfp_and_config_at_module_level(path):
    names = module_imports(path, top_level_only=True)
    allowed = {"kfp", "typing", "os", "components", "__future__"}
    assert names <= allowed | {n for n in names if n.startswith("genalign.config")}, names


@pytest.mark.parametrize("path", files("pipelines"), ids=lambda p: p.name)
def test_pipelines_import_only_kfp_and_components(path):
    names = module_imports(path, top_level_only=False)
    assert names <= {"kfp", "components", "typing", "__future__"}, names


# ---------------------------------------------------------------- the import graph
# Edges between genalign modules, imports inside functions included (they run, just
# later); imports under `if TYPE_CHECKING:` are left out (they never run).
# `from genalign.x import y` is an edge to genalign.x.y when that is a module, else to
# genalign.x.

SRC = ROOT / "src"
ROOT_PACKAGE = "genalign"

# The layers of DESIGN.md, lowest first: a module imports its own layer and the layers
# below it, never one above. Where this differs from the order in which DESIGN.md's
# layout lists the folders, the code decides:
# - tracking sits with storage: it imports nothing of genalign but secrets (which masks
#   what it logs), and the trainers (which log their steps) and the model resolver (which
#   reads the registry) use it;
# - evaluation sits below the generators and scorers: its metrics are measurements that
#   the penetration scorer shares (the voxel scan converter), and the evaluate stages
#   compose evaluation with generators and scorers;
# - backup and registry_access sit with storage: the entry points of k8s/'s backup
#   CronJob and users Job, they import nothing of genalign;
# - resume sits just below the stages: it reads the pipelines' declarations and the
#   tags the stages' MLflow runs carry, never a stage.
# Entries may name modules that do not exist yet.
LAYERS: list[tuple[str, ...]] = [
    ("genalign.config",),
    ("genalign.storage", "genalign.records", "genalign.artifacts", "genalign.tracking", "genalign.secrets",
     "genalign.backup", "genalign.registry_access"),
    ("genalign.losses",),
    ("genalign.models",),
    ("genalign.data", "genalign.render"),
    ("genalign.evaluation",),
    ("genalign.generators", "genalign.executors", "genalign.scorers", "genalign.pairs"),
    ("genalign.training", "genalign.trainjobs"),
    ("genalign.trainers",),
    ("genalign.resume",),
    ("genalign.stages",),
    ("genalign.cli",),
]

def in_stages_package(module: str) -> bool:
    return module == "genalign.stages" or module.startswith("genalign.stages.")


def genalign_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in sorted((SRC / ROOT_PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The dotted name a (possibly relative) `from ... import` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {genalign module it imports: line of its first import there}."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        never_run = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and _is_type_checking(node.test)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        found: dict[str, int] = {}
        for node in ast.walk(tree):
            if id(node) in never_run:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path.name == "__init__.py", node)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found[target] = min(found.get(target, node.lineno), node.lineno)
        edges[name] = found
    return edges


def checked_edges() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    modules = genalign_modules()
    return modules, import_edges(modules)


def strongly_connected(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph`, each sorted; every node in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_strongly_connected_finds_each_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["a"]}
    found = sorted(strongly_connected(graph))
    assert found == [["a", "b", "c"], ["d", "e"], ["f"]]


def test_import_edges_see_function_level_imports_and_skip_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.c import C\n"
        "def f():\n    from . import b\n"
    )
    (pkg / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("")
    modules = {"pkg": pkg / "__init__.py", **{f"pkg.{m}": pkg / f"{m}.py" for m in "abc"}}
    edges = import_edges(modules)
    assert edges["pkg.a"] == {"pkg.b": 5}
    assert edges["pkg.b"] == {"pkg.c": 1}


def test_no_import_cycles():
    modules, edges = checked_edges()
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    report = []
    for cycle in cycles:
        report.append(f"cycle of {len(cycle)}: {', '.join(cycle)}")
        for source in cycle:
            for target, line in sorted(edges[source].items()):
                if target in cycle:
                    where = f"{modules[source].relative_to(ROOT)}:{line}"
                    report.append(f"    {source} -> {target}  ({where})")
    assert not cycles, "import cycles among genalign modules:\n" + "\n".join(report)


def layer_of(module: str) -> int | None:
    """The index in LAYERS of `module`'s layer; the root package is below them all."""
    if module == ROOT_PACKAGE:
        return -1
    for rank, layer in enumerate(LAYERS):
        if any(module == entry or module.startswith(entry + ".") for entry in layer):
            return rank
    return None


def test_every_module_has_a_layer():
    missing = sorted(m for m in genalign_modules() if layer_of(m) is None)
    assert not missing, f"modules in no entry of LAYERS: {missing}"


def test_no_module_imports_a_higher_layer():
    modules, edges = checked_edges()

    def name(module: str) -> str:
        rank = layer_of(module)
        return "the root package" if rank == -1 else " / ".join(LAYERS[rank])

    upward = []
    for source, targets in sorted(edges.items()):
        for target, line in sorted(targets.items()):
            # A module in no layer fails test_every_module_has_a_layer instead.
            if None in (layer_of(source), layer_of(target)) or layer_of(target) <= layer_of(source):
                continue
            upward.append(
                f"{source} (layer {name(source)}) imports {target} (layer {name(target)})"
                f"  ({modules[source].relative_to(ROOT)}:{line})"
            )
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_stage_imports_another_stage():
    """A stage module may import the package (`StageResult`), never another stage: what
    two stages share lives in the library below them."""
    modules = genalign_modules()
    found = [
        f"{modules[source].relative_to(ROOT)}:{line}: {source} imports {target}"
        for source, targets in import_edges(modules).items()
        if in_stages_package(source) and source != "genalign.stages"
        for target, line in targets.items()
        if in_stages_package(target) and target != "genalign.stages"
    ]
    assert not found, "stages import other stages:\n" + "\n".join(found)
