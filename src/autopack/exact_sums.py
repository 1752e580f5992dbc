"""Sums of token counts that are exact at any size, on every engine: never an overflow error, never a float.

PostgreSQL sums ``bigint`` into ``numeric`` and MariaDB sums into ``DECIMAL``: exact, read back as Python ints
(never cast to ``BIGINT``, which a sum past 2^63 of a column an operator widened would overflow). SQLite's
``sum()`` stops with "integer overflow" past 2^63, so there each value is summed as its high and low 32 bits,
two sums that cannot overflow below 2^31 rows, joined in Python.
"""

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

LOW_BITS = 32


def sum_columns(dialect: str, **expressions: ColumnElement) -> list[sa.Label]:
    """``SUM`` of each expression, labelled by its keyword; read the row back with ``read_sums``."""
    if dialect != "sqlite":
        return [sa.func.sum(expression).label(name) for name, expression in expressions.items()]
    return [
        column
        for name, expression in expressions.items()
        for column in (
            sa.func.sum(expression.op(">>")(LOW_BITS)).label(f"{name}__high"),
            sa.func.sum(expression.op("&")(2**LOW_BITS - 1)).label(f"{name}__low"),
        )
    ]


def read_sums(row: Mapping, names: Iterable[str]) -> dict[str, int]:
    """The sums ``sum_columns`` labelled ``names``, as exact ints (0 for a sum over no rows)."""
    sums = {}
    for name in names:
        if name in row:
            sums[name] = int(row[name] or 0)
        else:
            sums[name] = (int(row[f"{name}__high"] or 0) << LOW_BITS) + int(row[f"{name}__low"] or 0)
    return sums
