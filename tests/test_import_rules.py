"""The dependency direction of shared/STYLE.md §1.2, checked on every file's AST."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.ImportFrom) and node.level:
            yield node.lineno, "." * node.level + (node.module or "")


def violations(folder: str, allowed_prefix: str, forbidden_roots: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path):
            where = f"{path.relative_to(ROOT)}:{line}: {module}"
            root = module.split(".")[0]
            if module.startswith("."):
                found.append(f"{where} (relative import; use the installed name)")
            elif root in ("engine", "tools"):
                found.append(f"{where} (import m2agent.{root}, never {root})")
            elif root == "m2agent" and not (
                module == allowed_prefix or module.startswith(allowed_prefix + ".")
            ):
                found.append(f"{where} (reaches outside {allowed_prefix})")
            elif root in forbidden_roots:
                found.append(f"{where} ({root} is not allowed here)")
    return found


def test_engine_never_imports_the_agent_side() -> None:
    assert violations("engine", "m2agent.engine", ()) == []


# Inside the engine, dependencies run kernels <- layers <- models <- runner <- engine <- server:
# a module imports nothing on a higher floor (the parallel state every layer uses lives in
# layers/; starting ranks, which needs the loader and the runner, lives in runner/).
ENGINE_FLOORS = {
    "m2agent.engine.kernels": 0,
    "m2agent.engine.layers": 1,
    "m2agent.engine.models": 2,
    "m2agent.engine.loader": 2,
    "m2agent.engine.runner": 3,
    "m2agent.engine.engine": 4,
    "m2agent.engine.llm": 4,
    "m2agent.engine.server": 5,
}


def engine_floor(module: str) -> int | None:
    for prefix, floor in ENGINE_FLOORS.items():
        if module == prefix or module.startswith(prefix + "."):
            return floor
    return None


def upward_imports(engine_dir: Path) -> list[str]:
    found = []
    for path in sorted(engine_dir.rglob("*.py")):
        parts = path.relative_to(engine_dir).with_suffix("").parts
        own = engine_floor(".".join(("m2agent", "engine", *parts)))
        if own is None:
            continue
        for line, module in imported_modules(path):
            floor = engine_floor(module)
            if floor is not None and floor > own:
                found.append(f"{path.relative_to(engine_dir)}:{line}: {module} (a higher floor)")
    return found


def test_engine_floors_import_only_downward() -> None:
    assert upward_imports(ROOT / "engine") == []


def test_engine_floor_check_sees_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "bad.py").write_text(
        "import torch\nfrom m2agent.engine.kernels import dispatch\n"
        "def f():\n    from m2agent.engine.runner.workers import start\n"
    )
    assert upward_imports(tmp_path) == [
        "layers/bad.py:4: m2agent.engine.runner.workers (a higher floor)"
    ]


def test_tools_import_only_the_stdlib_side() -> None:
    forbidden = ("torch", "triton", "rich", "prompt_toolkit", "typer")
    assert violations("tools", "m2agent.tools", forbidden) == []


def test_protocol_imports_no_torch() -> None:
    forbidden = ("torch", "triton", "transformers", "numpy")
    assert violations("engine/protocol", "m2agent.engine.protocol", forbidden) == []


def test_agent_side_uses_installed_names() -> None:
    found = [v for v in violations("m2agent", "m2agent", ()) if "outside" not in v]
    assert found == []


@pytest.mark.parametrize("module", ["m2agent.cli", "m2agent.engine.protocol", "m2agent.tools"])
def test_light_modules_do_not_load_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]


def test_package_init_holds_only_the_version() -> None:
    tree = ast.parse((ROOT / "m2agent" / "__init__.py").read_text())
    body = [node for node in tree.body if not isinstance(node, ast.Expr)]  # docstring
    assert len(body) == 1
    assert isinstance(body[0], ast.Assign)
    assert [t.id for t in body[0].targets if isinstance(t, ast.Name)] == ["__version__"]
