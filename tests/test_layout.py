"""The layout holds: imports run one way, every module (tests too) reads in one sitting, and test
modules share through conftest.py and helpers.py, never by importing one another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("cli", "configs", "data", "model", "training", "inference")
# what each package may import from the project (besides itself): cli -> training -> inference
# -> model, data -> configs
ALLOWED = {
    "configs": set(),
    "data": {"configs"},
    "model": {"configs"},
    "inference": {"model", "data", "configs"},
    "training": {"inference", "model", "data", "configs"},
    "cli": {"training", "inference", "model", "data", "configs"},
}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 300, 50


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).glob("*.py"))


def suite_files() -> list[Path]:
    return sorted((ROOT / "tests").glob("*.py"))


def project_imports(path: Path) -> set[str]:
    """The project packages a module imports (mha.X...), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found |= {name.split(".")[1] for name in names if name.startswith("mha.")}
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_run_one_way(path: Path):
    package = path.parent.name
    backwards = project_imports(path) - ALLOWED[package] - {package}
    assert not backwards, f"{package}/{path.name} imports {sorted(backwards)}"


def test_the_import_check_sees_a_backward_arrow(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mha.cli.app import main\n")
    assert project_imports(module) == {"cli"}


def test_model_imports_only_torch_and_configs():
    for path in (ROOT / "model").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                root = node.module.split(".")[0]
                assert root in {"torch", "mha", "__future__", "math", "dataclasses",
                                "collections", "typing"}, f"model/{path.name}: {node.module}"
                if root == "mha":
                    assert node.module.split(".")[1] in {"model", "configs"}, path.name
            elif isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= {"torch", "math"}, path.name


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.mark.parametrize("path", modules() + suite_files(),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_modules_and_functions_stay_short(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.parent.name}/{path.name} has {lines} lines"
    assert not long_functions(path), f"{path.parent.name}/{path.name}: {long_functions(path)}"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth, by its first name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", suite_files(), ids=lambda p: p.name)
def test_no_test_module_imports_another_or_conftest(path: Path):
    """Fixtures come from conftest.py by name, helpers from helpers.py."""
    wrong = {name for name in imported_modules(path) if name.startswith("test_")
             or name == "conftest"}
    assert not wrong, f"tests/{path.name} imports {sorted(wrong)}"


def test_the_test_import_check_sees_an_import_inside_a_function(tmp_path: Path):
    module = tmp_path / "test_m.py"
    module.write_text("def test_f():\n    from test_train import tiny\n")
    assert imported_modules(module) == {"test_train"}


def test_the_length_check_sees_a_long_function(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert long_functions(module) == [f"f ({MAX_FUNCTION_LINES + 1} lines)"]


def test_the_readmes_map_names_every_module():
    """"Where each idea lives" links each module by its file name (__init__ aside)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Where each idea lives"):]
    section = section[:section.index("\n## ", 1)].replace("\\_", "_")
    missing = [str(p.relative_to(ROOT)) for p in modules()
               if p.name != "__init__.py" and f"({p.relative_to(ROOT)})" not in section]
    assert not missing, missing
