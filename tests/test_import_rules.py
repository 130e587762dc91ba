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


@pytest.mark.parametrize(
    "module",
    ["m2agent/agent", "m2agent/backends", "m2agent/fix.py", "m2agent/ci_job.py",
     "m2agent/runtime.py"],
)  # fmt: skip
def test_jobs_and_the_core_never_import_a_front_end(module: str) -> None:
    """`fix`, `ci`, the loop, the session and the backends take an event sink: none of them
    imports ui/ (nor rich or prompt_toolkit)."""
    path = ROOT / module
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found = [
        f"{file.relative_to(ROOT)}:{line}: {name}"
        for file in files
        for line, name in imported_modules(file)
        if name.startswith("m2agent.ui") or name.split(".")[0] in ("rich", "prompt_toolkit")
    ]
    assert found == []


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


def test_cli_and_mcp_config_do_not_load_the_mcp_sdk() -> None:
    """The SDK (and its HTTP stack) loads only when a server starts."""
    code = "import sys, m2agent.cli, m2agent.mcp.config, m2agent.mcp.tool, m2agent.mcp.manager; "
    code += "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_package_init_holds_only_the_version() -> None:
    tree = ast.parse((ROOT / "m2agent" / "__init__.py").read_text())
    body = [node for node in tree.body if not isinstance(node, ast.Expr)]  # docstring
    assert len(body) == 1
    assert isinstance(body[0], ast.Assign)
    assert [t.id for t in body[0].targets if isinstance(t, ast.Name)] == ["__version__"]


def test_no_tool_names_or_argument_names_outside_the_tools() -> None:
    """Tools describe themselves (summary, preview, command): the agent side never spells a
    tool's name or argument names as a string."""
    words = {"Bash", "Edit", "Write", "Read", "command", "file_path", "old_string"}
    found = []
    for path in sorted((ROOT / "m2agent").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Types are not data: `type: Literal["command"]` in the hooks config model is Claude
        # Code's name for a kind of hook, not a tool's argument.
        in_types = {
            id(node)
            for ann in ast.walk(tree)
            if isinstance(ann, ast.AnnAssign)
            for node in ast.walk(ann.annotation)
        }
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in words and id(node) not in in_types
        ]
    assert found == []
