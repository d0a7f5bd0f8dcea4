"""Fixtures for integration tests: a private running system per test that breaks things."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from chat_common.clients.db import make_engine
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
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
