"""``python -m autopack verify``: check the BUILD-144 validation criteria on ``DATABASE_URL``."""

import argparse
import sys

from alembic.util import CommandError

from autopack.database import database_url
from autopack.migration_env import DEFAULT_BUSY_TIMEOUT_S, explain, migration_engine, parse_url, require_sqlite_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autopack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check the BUILD-144 validation criteria on DATABASE_URL")
    parser.parse_args(argv)

    from autopack.verify import render, verify

    try:
        url = parse_url(database_url())
        require_sqlite_file(url, may_create=False)
        engine = migration_engine(url, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S, lock_timeout="10s")
        try:
            with engine.connect() as connection:
                result = verify(connection)
        except CommandError:
            raise
        except Exception as error:
            message = explain(error, url, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S, lock_timeout="10s")
            if message is None:
                raise
            raise CommandError(message.replace("; nothing was changed.", ".")) from None
        finally:
            engine.dispose()
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(result, url))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
