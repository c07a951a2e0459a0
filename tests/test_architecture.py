"""The layering in README → Architecture, checked by import-linter over the real import graph.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``). Each test runs the linter in a
child process so grimp builds the graph of the tree it is pointed at, not of what this process has
already imported.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webhook_service"
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
MAX_LINES = 400


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_of_the_tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(PACKAGE, tmp_path / "webhook_service", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_every_import_points_down_and_only_storage_speaks_sql():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("importer", "line"),
    [
        ("core/tasks.py", "from webhook_service.web import views"),  # a building block reaching up to HTTP
        ("storage/events.py", "from webhook_service.runtime import Runtime"),  # storage reaching up
        ("web/health.py", "from webhook_service.sandbox import sink"),  # product code importing the sandbox
        ("delivery/replay.py", "from webhook_service.normalize import events"),  # a stage reaching up a stage
        ("delivery/worker.py", "import sqlalchemy"),  # SQL outside storage
        ("contract/filters.py", "from webhook_service.storage import models"),  # the contract reaching up to storage
    ],
)
def test_an_import_against_the_contract_fails_the_check(tmp_path, importer, line):
    tree = _copy_of_the_tree(tmp_path)
    module = tree / "webhook_service" / importer
    module.write_text(module.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert importer.removesuffix(".py").replace("/", ".") in result.stdout


def _product_modules() -> list[Path]:
    """Everything but the sandbox (trial tooling) and migrations (frozen history)."""
    return [
        path for path in sorted(PACKAGE.rglob("*.py")) if "sandbox" not in path.parts and "migrations" not in path.parts
    ]


def test_no_product_module_is_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in _product_modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_product_loads_the_sandbox_only_inside_the_cli_commands_that_need_it():
    """The CLI's ``demo`` and ``simulator`` commands import it when run, so the product never loads it."""
    offenders = []
    for path in _product_modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: a function-level import loads on use
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if any(name.startswith("webhook_service.sandbox") for name in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []
