"""Where this tree's migrations are: the checkout's ``alembic.ini`` (``alembic/`` beside it), or, in an installed
wheel with no checkout around, the copy of ``alembic/`` the wheel carries as ``autopack.migrations.alembic_tree``.

The same revisions either way; ``init_db()`` and the ``autopack`` command find them from any directory. A
config made for the installed copy has no file: its caller sets up logging (``autopack`` logs as ``alembic.ini``
says; ``init_db()`` leaves the application's logging alone)."""

import logging.config
from importlib import resources
from pathlib import Path

from alembic.config import Config

HERE = Path(__file__).resolve()
# src/autopack/migrations/ -> the checkout; only a src/ folder is a checkout's (``pip install --target DIR`` puts the
# package in DIR, whose parent may hold another application's alembic.ini)
CHECKOUT_INI = HERE.parents[3] / "alembic.ini" if HERE.parents[2].name == "src" else None

# alembic.ini's logging, for a config without a file: the report on stderr, SQL quiet, the FAILED sentence on stderr
# too (Alembic prints it on stdout)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": "%(levelname)-5.5s [%(name)s] %(message)s"},
        "failed": {"format": "ERROR [alembic] FAILED: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "generic"},
        "failed": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "failed"},
    },
    "root": {"level": "WARNING", "handlers": ["console"]},
    "loggers": {
        "sqlalchemy.engine": {"level": "WARNING"},
        "alembic": {"level": "INFO"},
        "alembic.util.messaging": {"level": "ERROR", "handlers": ["failed"], "propagate": False},
    },
}


def installed_tree() -> Path:
    """The copy of ``alembic/`` an installed wheel carries (absent from a checkout's own ``src``)."""
    return Path(str(resources.files("autopack.migrations") / "alembic_tree"))


def alembic_config(cmd_opts=None) -> Config | None:
    """Alembic's config for this tree: the copy an installed wheel carries (whatever is around the install), else
    the checkout's ``alembic.ini`` (an editable install, or ``src`` on the path); None when neither is there."""
    tree = installed_tree()
    if not (tree / "env.py").is_file():
        if CHECKOUT_INI is not None and CHECKOUT_INI.is_file():
            return Config(str(CHECKOUT_INI), cmd_opts=cmd_opts)
        return None
    config = Config(cmd_opts=cmd_opts)
    config.set_main_option("script_location", str(tree))
    config.set_main_option("path_separator", "os")
    return config


def the_tree_config(caller: str, cmd_opts=None) -> Config:
    """``alembic_config``, or the catalogue's sentence naming ``caller`` (``init_db()``, ``autopack upgrade``) when
    neither the checkout's tree nor the installed copy is there (a broken install)."""
    config = alembic_config(cmd_opts=cmd_opts)
    if config is None:
        from autopack.migrations.build144.messages import refusal

        raise refusal(
            "no_migrations_tree",
            caller=caller,
            ini=CHECKOUT_INI or "a checkout's alembic.ini",
            installed=installed_tree(),
        )
    return config


def configure_logging(config: Config) -> None:
    """As ``alembic.ini`` would, for a config without a file (env.py reads the file's own otherwise)."""
    if config.config_file_name is None:
        logging.config.dictConfig(LOGGING)
