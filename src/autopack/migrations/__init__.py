"""What the revisions in ``alembic/versions`` are built from, one module per job (see docs/architecture.md).

Revisions import from here, never from the application's models: ``usage_table`` describes the table,
``backfill_rule`` holds BUILD-144's rule, ``plan`` the plan of a run, ``preflight_checks`` every refusal
before a change, and one module per engine strategy (``sqlite_schema_edit``, ``online_backfill``,
``batched_backfill``, ``offline_scripts``).
"""
