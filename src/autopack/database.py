"""Database wiring: the declarative ``Base``, ``engine``, ``SessionLocal`` and ``get_db``.

The URL comes from ``DATABASE_URL`` (default ``sqlite:///autopack.db``), the same rule the Alembic
``env.py`` follows, so the application and its migrations always talk to the same database.
"""

import os
from collections.abc import Iterator

from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

DEFAULT_DATABASE_URL = "sqlite:///autopack.db"

# Every constraint gets a predictable name: SQLite batch migrations can only alter named constraints.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def database_url() -> str:
    """The configured database URL: ``DATABASE_URL`` if set and non-empty, else the embedded default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata


engine = create_engine(database_url())
SessionLocal = sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)


def get_db() -> Iterator[Session]:
    """Yield a session and close it afterwards (a FastAPI dependency)."""
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()
