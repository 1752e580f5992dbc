"""pytest-alembic's built-in checks, on every backend (the ``alembic_engine`` fixture is parametrized)."""

import pytest
from pytest_alembic.tests import (  # noqa: F401
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from pytest_alembic.tests.experimental import test_all_models_register_on_metadata as models_on_metadata
from pytest_alembic.tests.experimental import test_downgrade_leaves_no_trace  # noqa: F401


@pytest.mark.parametrize("backend", ["sqlite"])
def test_all_models_register_on_metadata(alembic_runner, backend):
    """Every model is reachable from env.py's import of the metadata.

    This checks imports, not a database, so one engine suffices. It runs on SQLite because pytest-alembic
    passes the URL through ConfigParser, which rejects the ``%2F`` of a PostgreSQL socket-directory URL.
    """
    models_on_metadata(alembic_runner, model_package="autopack.models")
