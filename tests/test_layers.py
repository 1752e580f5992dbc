"""The migrations tree's two layers hold: a runtime that knows no table and no revision, and BUILD-144's change with
one strategy module per engine, each implementing the same interface; engine tests live only in the strategies and
the runtime's connection set-up."""

import ast
import inspect
import re
from pathlib import Path

import pytest

from autopack.migrations.build144 import engines

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "src" / "autopack" / "migrations"
RUNTIME = MIGRATIONS / "runtime"
# where an engine may be told apart by name: its strategy, and the runtime's connection set-up
ENGINE_TESTS_ALLOWED = {MIGRATIONS / "build144" / "engines", RUNTIME / "connection.py", RUNTIME / "engine_traits.py"}
ENGINE_TEST = re.compile(
    r"dialect(\.name)?\s*(==|!=|\bin\b|\bnot in\b)|get_backend_name\(\)\s*(==|!=|\bin\b)|\(\"mysql\", \"mariadb\"\)"
)


def tree_files() -> list[Path]:
    return sorted([*MIGRATIONS.rglob("*.py"), *(ROOT / "alembic").rglob("*.py")])


def allowed(path: Path) -> bool:
    return any(path == place or place in path.parents for place in ENGINE_TESTS_ALLOWED)


def test_no_engine_is_told_apart_by_name_outside_the_strategies_and_the_connection_set_up():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in tree_files()
        if not allowed(path)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ENGINE_TEST.search(line)
    ]
    assert found == []


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.name)
def test_the_runtime_imports_nothing_of_build144_and_names_no_table_or_revision(path: Path):
    """Its sentences name the table and what a stop leaves through fields the caller fills."""
    assert not [m for m in imported_modules(path) if m.startswith("autopack.migrations.build144")]
    code = path.read_text()
    assert "llm_usage_events" not in code
    assert not re.search(r"\b000[1-9]\b", code)


STEPS = ("inspect", "change_schema", "backfill", "online_upgrade", "downgrade", "offline_script", "failure_leaves")


def interface() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(engines.Strategy).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize("name", engines.ENGINES)
def test_each_engine_module_implements_the_whole_strategy(name: str):
    module = engines.named(name)
    assert name == module.NAME
    assert set(STEPS) <= set(interface())
    for member, signature in interface().items():
        implemented = getattr(module, member, None)
        assert callable(implemented), f"{name}.py lacks {member}"
        wanted = [p for p in signature.parameters if p != "self"]
        assert list(inspect.signature(implemented).parameters) == wanted, f"{name}.{member}"
    for constant in engines.Strategy.__annotations__:
        assert hasattr(module, constant), f"{name}.py lacks {constant}"


def test_mysql_and_mariadb_are_one_strategy():
    assert engines.named("mysql") is engines.named("mariadb")
