"""The layering rules of DESIGN.md, checked on the source (module-level imports)."""

import ast
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
