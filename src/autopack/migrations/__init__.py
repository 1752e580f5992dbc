"""What the revisions in ``alembic/versions`` are built from, in two layers (see docs/architecture.md).

- ``runtime``: how any migration of this tree runs, knowing no table and no revision: the connection set-up and
  session checks, what it knows of each engine (``engine_traits``), the ``-x`` options, the migration lock,
  interrupts, throttling, progress, lock retries, error explanation and the catalogue of messages.
- ``build144``: the BUILD-144 change revision 0002 owns: its plan, the backfill rule, the preflight checks, the
  set-aside table, the fill trigger, the report, and one strategy per engine in ``build144.engines``.

Revisions import from here, never from the application's models.
"""
