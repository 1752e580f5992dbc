"""The package as it is deployed: a wheel built from this checkout, installed (not editable) into a clean virtualenv,
migrates from another directory, with no checkout on its path: the `autopack` command (Alembic's commands, verify,
backup) and `init_db()`, on a new database and on a pre-BUILD-144 one with rows."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import URL

from support import ROOT, alembic, columns_of, event_row, execute, insert_events, table_names, token_rows

PACKAGE = "autopack-usage-migrations"

# one worker builds and installs the wheel for the whole module
pytestmark = pytest.mark.xdist_group("wheel")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The wheel, and a virtualenv with it installed from the wheel file, as `pip install <checkout>` deploys."""
    place = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools builds in the source folder (build/, *.egg-info), which another build of the
    # checkout at the same time (a second test run, a developer's pip) would share and spoil
    source = place / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(place / "dist"), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (place / "dist").glob("*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(place / "venv")], check=True, timeout=120)
    pip = [str(place / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, timeout=600, env=clean_environment())
    elsewhere = place / "elsewhere"
    elsewhere.mkdir()
    return {"wheel": wheel, "bin": place / "venv" / "bin", "cwd": elsewhere}


def clean_environment() -> dict[str, str]:
    """This environment without what would put the checkout on a path (a PYTHONPATH naming its src/, where the wheel
    build leaves an egg-info that pip would take for the package installed)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(installed: dict, url: URL | str, *args: str) -> subprocess.CompletedProcess:
    """A command of the installed package, from a directory outside the checkout, with nothing of it on the path."""
    rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    env = clean_environment()
    env.update(DATABASE_URL=rendered, PATH=f"{installed['bin']}{os.pathsep}{env['PATH']}")
    return subprocess.run(args, cwd=installed["cwd"], env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_carries_the_migrations_tree_and_every_package(installed: dict):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    tree = "autopack/migrations/alembic_tree/"
    shipped = {n.removeprefix(tree) for n in names if n.startswith(tree)}
    in_checkout = {str(p.relative_to(ROOT / "alembic")) for p in (ROOT / "alembic").rglob("*") if p.is_file()}
    assert {n for n in in_checkout if "__pycache__" not in n} <= shipped
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert found <= declared  # a new package folder under src/ that the wheel would leave out
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "autopack = autopack.__main__:main" in zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()


def test_the_installed_package_runs_from_its_own_files(installed: dict, tmp_path: Path):
    found = run(installed, "sqlite:///unused.db", "python", "-c", "import autopack; print(autopack.__file__)")
    assert "site-packages" in found.stdout and str(ROOT) not in found.stdout
    version = run(installed, "sqlite:///unused.db", "autopack", "--version")
    assert version.returncode == 0 and version.stdout.strip() == "autopack 0.1.0"


def test_the_installed_autopack_command_migrates_a_new_database_and_back(installed: dict, db_url: URL):
    up = run(installed, db_url, "autopack", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "[3/3] Verification: total rows 0" in up.stderr
    assert run(installed, db_url, "autopack", "current").stdout.split() == ["0002", "(head)"]
    columns = columns_of(db_url)
    assert not columns["total_tokens"]["nullable"] and columns["prompt_tokens"]["nullable"]
    down = run(installed, db_url, "autopack", "downgrade", "-1")
    assert down.returncode == 0, down.stderr
    assert run(installed, db_url, "autopack", "current").stdout.split() == ["0001"]
    assert "total_tokens" not in columns_of(db_url)


def test_the_installed_package_upgrades_a_legacy_database_with_rows(installed: dict, db_url: URL):
    alembic(db_url, "upgrade", "0001")  # a pre-BUILD-144 table as old Autopack made it, with rows
    execute(db_url, "DROP TABLE alembic_version")  # never versioned: upstream's own create_all()
    rows = [event_row(i, prompt_tokens=10 * i, completion_tokens=i) for i in range(1, 6)]
    engine = create_engine(db_url)
    with engine.begin() as connection:
        insert_events(connection, rows)
    engine.dispose()
    up = run(installed, db_url, "autopack", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert sorted(token_rows(db_url).values()) == sorted((10 * i, i, 11 * i) for i in range(1, 6))
    checked = run(installed, db_url, "autopack", "verify")
    assert checked.returncode == 0 and "All checks passed" in checked.stdout, checked.stdout + checked.stderr
    if db_url.get_backend_name() == "sqlite":
        backup = run(installed, db_url, "autopack", "backup", "--to", str(Path(db_url.database).with_suffix(".bak")))
        assert backup.returncode == 0 and "5 rows of llm_usage_events" in backup.stdout, backup.stderr
    down = run(installed, db_url, "autopack", "downgrade", "-1")
    assert down.returncode == 0, down.stderr
    assert sorted(token_rows(db_url).values()) == sorted((10 * i, i) for i in range(1, 6))


def test_init_db_of_the_installed_package_migrates_from_any_directory(installed: dict, db_url: URL):
    started = run(installed, db_url, "python", "-c", "from autopack.database import init_db; init_db()")
    assert started.returncode == 0, started.stderr
    assert {"llm_usage_events", "alembic_version"} <= table_names(db_url)
    assert run(installed, db_url, "autopack", "current").stdout.split() == ["0002", "(head)"]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_exit_status_tells_bad_arguments_from_a_database_that_cannot_be_checked(installed: dict, db_url: URL):
    misused = run(installed, db_url, "autopack", "verify", "--jsno")
    assert misused.returncode == 2 and "unrecognized arguments: --jsno" in misused.stderr, misused.stderr
    missing = run(installed, db_url, "autopack", "verify", "--json")  # no file there: verify never creates one
    assert missing.returncode == 3 and missing.stderr.startswith("error: No SQLite database at "), missing.stderr
    assert '"version": 1' in missing.stdout and '"ok": false' in missing.stdout
    assert run(installed, db_url, "autopack", "upgrade", "head").returncode == 0
    assert run(installed, db_url, "autopack", "verify").returncode == 0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_broken_install_names_the_command_that_cannot_find_the_tree(installed: dict, db_url: URL):
    (site_packages,) = (installed["bin"].parent / "lib").glob("python*/site-packages")
    tree = site_packages / "autopack" / "migrations" / "alembic_tree"
    tree.rename(tree.with_name("alembic_tree.moved"))  # as a partial copy or a pruned image would leave it
    try:
        upgrade = run(installed, db_url, "autopack", "upgrade", "head")
        started = run(installed, db_url, "python", "-c", "from autopack.database import init_db; init_db()")
    finally:
        tree.with_name("alembic_tree.moved").rename(tree)
    assert upgrade.returncode == 3 and "Traceback" not in upgrade.stderr, upgrade.stderr
    assert upgrade.stderr.startswith("error: autopack upgrade cannot find the migrations tree: neither "), upgrade
    assert "reinstall the package" in upgrade.stderr
    assert "init_db() cannot find the migrations tree" in started.stderr
    assert not Path(db_url.database).exists()  # nothing made on the way


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_install_beside_another_applications_alembic_ini_migrates_with_its_own_tree(
    installed: dict, db_url: URL, tmp_path: Path
):
    host = tmp_path / "host"  # an application vendoring the package with `pip install --target host/lib`
    (host / "migrations").mkdir(parents=True)
    (host / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    (host / "migrations" / "env.py").write_text("raise SystemExit('the host application\\'s env.py ran')\n")
    pip = [str(installed["bin"] / "python"), "-m", "pip", "install", "-q", "--no-deps", "--target", str(host / "lib")]
    subprocess.run([*pip, str(installed["wheel"])], check=True, capture_output=True, timeout=300)
    env = clean_environment()
    env.update(DATABASE_URL=db_url.render_as_string(hide_password=False), PYTHONPATH=str(host / "lib"))
    python = str(installed["bin"] / "python")
    for command in (["-m", "autopack", "upgrade", "head"], ["-c", "from autopack.database import init_db; init_db()"]):
        ran = subprocess.run([python, *command], cwd=host, env=env, capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0 and "host application" not in ran.stderr, ran.stderr
    assert "total_tokens" in columns_of(db_url)
    assert run(installed, db_url, "autopack", "current").stdout.split() == ["0002", "(head)"]
