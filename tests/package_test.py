"""The house rules, checked on the source: imports flow one way, files stay small."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = ROOT / "minigpt_jax"


def _imports(path: pathlib.Path) -> set[str]:
    """Every top-level module a file imports, lazy imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "minigpt_jax":
                names |= {f"minigpt_jax.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    return {
        m: {n.split(".")[1] for n in _imports(PACKAGE / f"{m}.py") if n.startswith("minigpt_jax.")}
        & modules
        for m in modules
    }


def test_imports_flow_one_way_and_nothing_imports_the_cli():
    graph = _graph()
    done, visiting = set(), []

    def visit(m):
        assert m not in visiting, f"import cycle: {' -> '.join([*visiting, m])}"
        if m not in done:
            visiting.append(m)
            for d in graph[m]:
                visit(d)
            visiting.pop()
            done.add(m)

    for m in graph:
        visit(m)
    assert not [m for m, deps in graph.items() if "cli" in deps]


def test_presets_import_only_the_config_module():
    for path in (ROOT / "configs").glob("*.py"):
        ours = {n for n in _imports(path) if n.startswith("minigpt_jax")}
        assert ours <= {"minigpt_jax", "minigpt_jax.config"}, (path.name, ours)


def test_only_the_reference_modules_import_torch():
    importers = {p.stem for p in PACKAGE.glob("*.py") if any(
        n == "torch" or n.startswith("torch.") for n in _imports(p))}  # fmt: skip
    assert importers == {"torch_ref", "torch_train"}


def test_only_the_wandb_sink_imports_wandb():
    """wandb is an extra: one module imports it, inside a function (only when a run asks)."""
    importers = {p.stem for p in PACKAGE.glob("*.py") if any(
        n == "wandb" or n.startswith("wandb.") for n in _imports(p))}  # fmt: skip
    assert importers == {"wandb_sink"}
    top_level = {n.names[0].name for n in ast.parse((PACKAGE / "wandb_sink.py").read_text()).body
                 if isinstance(n, ast.Import)}  # fmt: skip
    assert "wandb" not in top_level


def test_no_module_is_over_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 300, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
