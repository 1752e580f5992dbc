"""The tree's own rules, checked on its files: revisions stand alone, read top-down, tests share one helper module."""

import ast
import re
from pathlib import Path

import pytest

from support import ROOT

VERSIONS = ROOT / "alembic" / "versions"
# what a revision may never import: the application's models and everything built on them
APPLICATION = ("autopack.models", "autopack.usage_recorder", "autopack.database", "autopack.main", "autopack.dashboard")


def application_imports(folder: Path) -> list[str]:
    """'file: module' for each import of the application's models (or what is built on them) in ``folder``."""
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]  # from autopack import models: the module it names
                modules += [f"autopack.{alias.name}" for alias in node.names] if node.module == "autopack" else []
            found += [f"{path.name}: {m}" for m in modules if m.startswith(APPLICATION) or m == "autopack.models"]
    return found


def test_no_revision_imports_the_application_models():
    assert application_imports(VERSIONS) == []


PLANTED = '''"""A revision written the wrong way."""
import sqlalchemy as sa
from alembic import op

from autopack.models import LlmUsageEvent

revision = "0099"
down_revision = "0002"


def upgrade() -> None:
    op.execute(sa.update(LlmUsageEvent).values(total_tokens=1))
'''


@pytest.mark.parametrize("how", ["from autopack.models import LlmUsageEvent", "import autopack.usage_recorder"])
def test_the_import_check_fails_on_a_planted_revision(tmp_path, how):
    (tmp_path / "0099_planted.py").write_text(PLANTED.replace("from autopack.models import LlmUsageEvent", how))
    assert application_imports(tmp_path) == [f"0099_planted.py: {how.split()[1]}"]


def functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.py")), ids=lambda p: p.name)
def test_upgrade_and_downgrade_are_on_the_first_screen(path):
    """upgrade() starts before line 100 and downgrade() before 160, each at most 40 lines: the
    revision's outline stays on its first screens."""
    found = functions(path)
    upgrade, downgrade = found["upgrade"], found["downgrade"]
    assert upgrade.lineno < 100 and downgrade.lineno < 160, (upgrade.lineno, downgrade.lineno)
    for function in (upgrade, downgrade):
        assert function.end_lineno - function.lineno + 1 <= 40, function.name


def test_test_modules_share_helpers_only_through_support():
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    offenders = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in test_modules]
    assert offenders == []


def test_no_fmt_skip_markers_without_a_reason():
    sources = [*ROOT.glob("src/**/*.py"), *ROOT.glob("alembic/**/*.py"), *ROOT.glob("tests/*.py")]
    sources += ROOT.glob("benchmarks/*.py")
    marked = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        for number, text in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"#\s*fmt:\s*skip\s*$", text)  # a marker with its reason beside it is allowed
    ]
    assert marked == []
