"""Fixtures for integration tests: a private running system per test that breaks things; databases of a migration
test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from chat_common.clients.db import drop_database, make_engine
from chat_common.ops.migrate import alembic_config, upgrade
from chat_common.schema.tables import metadata
from chat_devtools.http import Api
from chat_devtools.namespace import BASE_DATABASE_URL, Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT


@pytest.fixture
def private_system(fresh_namespace: Namespace) -> Iterator[System]:
    """A whole system of the test's own (its own database, keys and queues), stopped afterwards."""
    system = System(fresh_namespace, LOG_ROOT / fresh_namespace.name).start()
    yield system
    system.stop()


@pytest.fixture
def private_api(private_system: System) -> Api:
    """Client of the private system."""
    return Api(private_system.base_url)


class Database:
    """Direct reads of what was persisted, for checking exactly-once."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, pool_size=1)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def messages_of(self, token: str, chat_number: int) -> list:
        """(number, body) of every persisted message of a chat."""
        return self.rows(
            "SELECT m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
            "JOIN applications a ON a.id = c.application_id WHERE a.token_digest = SHA2(:t, 256) AND c.number = :n "
            "ORDER BY m.number",
            t=token,
            n=chat_number,
        )


@pytest.fixture
def private_db(fresh_namespace: Namespace) -> Iterator[Database]:
    """SQL access to the private system's database."""
    db = Database(fresh_namespace.settings.database_url)
    yield db
    db.engine.dispose()


@contextmanager
def migrated_database(prefix: str, revision: str = "head") -> Iterator[tuple[str, Engine]]:
    """A database of the caller's own brought to ``revision`` (its URL and an engine), dropped afterwards."""
    url = make_url(BASE_DATABASE_URL).set(database=f"{prefix}_{uuid.uuid4().hex[:10]}")
    url = url.render_as_string(hide_password=False)
    engine = None
    try:
        upgrade(url, revision)
        engine = make_engine(url, pool_size=1)
        yield url, engine
    finally:
        if engine is not None:
            engine.dispose()
        drop_database(url)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database of ``engine`` back to ``revision``."""
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)


def differences_from_metadata(engine: Engine, table: str, compare_types: bool = True) -> list:
    """What Alembic finds between the database and the tables' metadata, about ``table``."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": compare_types})
        return [d for d in compare_metadata(context, metadata) if table in repr(d)]
