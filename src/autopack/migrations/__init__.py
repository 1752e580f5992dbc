"""What the revisions in ``alembic/versions`` are built from, one module per job (see docs/architecture.md).

Revisions import from here, never from the application's models.

- The table and the rule: ``usage_table`` (the columns, declared once), ``backfill_rule`` (which rows need a
  total, what it becomes, how the table is counted), ``doctor_index``, ``holdover`` (the set-aside table),
  ``fill_trigger``, ``table_inspection`` (what is on and around the table as it really is).
- A run: ``options`` (``-x``), ``connection`` (engines and session checks), ``migration_lock``, ``plan``,
  ``preflight_checks`` (every refusal before a change), ``progress``, ``report``, ``errors``, ``messages`` (every
  sentence, by name) and ``interrupts`` (what the operator reads), ``retired_revisions``.
- The change per engine and mode: ``sqlite_schema_edit``, ``postgres_rewrite``, ``mariadb_schema_change``,
  ``batched_backfill``, ``online_backfill`` with ``throttle``, ``online_downgrade``, ``logical_replication``,
  ``offline_scripts``.
"""
