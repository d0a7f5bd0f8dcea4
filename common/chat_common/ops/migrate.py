"""`python -m chat_common.ops.migrate`: create the database if missing and apply every Alembic revision."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from chat_common import logs, schema
from chat_common.clients.db import create_database_if_missing, make_engine
from chat_common.config import Settings

MIGRATIONS_DIR = Path(schema.__file__).with_name("migrations")
log = logging.getLogger("chat_common.ops.migrate")


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for running this project's revisions on ``connection`` (its transaction)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (creating the database first if needed)."""
    if create_database_if_missing(database_url):
        log.info("created database")
    # No read timeout: a revision that rebuilds a big table (0004) answers only when the rebuild is done.
    engine = make_engine(database_url, pool_size=1, read_timeout=None)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def main() -> None:
    """Entry point of the migration command (also the Helm pre-install/pre-upgrade hook)."""
    logs.configure()
    settings = Settings.from_env()
    # The migrations user (DDL) when the deployment has one (chat_common.ops.grants); the services' user otherwise.
    upgrade(settings.database_migrations_url or settings.database_url)
    log.info("database is at the latest revision")


if __name__ == "__main__":
    main()
