"""Fixtures shared by every test package: an isolated namespace and, for HTTP tests, the real running system."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from sqlalchemy import Engine, text

from chat_common.clients.db import make_engine

# The namespace and the processes are imported where they are used: the unit tests load this file too, and
# would otherwise pay for Alembic, which none of them needs (about 0.1 s of their start-up).
if TYPE_CHECKING:
    from chat_devtools.namespace import Namespace
    from chat_devtools.processes import System

LOG_ROOT = Path(os.environ.get("TEST_LOG_DIR", "/tmp/chat-system-test-logs"))


@contextmanager
def own_system(
    label: str, *, api_workers: int = 2, extra_env: dict | None = None, **settings: object
) -> Iterator[System]:
    """A whole system (API and writers, ready) on a namespace of its own (``Namespace.create(label, **settings)``),
    stopped and its namespace destroyed afterwards."""
    from chat_devtools.namespace import Namespace
    from chat_devtools.processes import System

    namespace = Namespace.create(label, **settings)
    system = System(namespace, LOG_ROOT / namespace.name, api_workers=api_workers, extra_env=extra_env)
    try:
        yield system.start()
    finally:
        system.stop()
        namespace.destroy()


def seed_messages(database_url: str, token: str, chat: int, count: int, first_number: int = 1) -> None:
    """``count`` messages (numbers from ``first_number``) in an existing chat, written straight to MySQL: a chat far
    larger than creates through the API could make in a test's time."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            app_id, chat_id = conn.execute(
                text(
                    "SELECT a.id, c.id FROM applications a JOIN chats c ON c.application_id = a.id"
                    " WHERE a.token_digest = SHA2(:token, 256) AND c.number = :chat"
                ),
                {"token": token, "chat": chat},
            ).one()
            conn.execute(
                text(
                    "INSERT INTO messages (application_id, chat_id, number, body)"
                    f" SELECT :app, :chat, :first - 1 + seq, CONCAT('seeded message body ', seq) FROM seq_1_to_{count}"
                ),
                {"app": app_id, "chat": chat_id, "first": first_number},
            )
    finally:
        engine.dispose()


# For fixtures (``yield from``): what they hand out, released when they end.
def namespace_of(label: str) -> Iterator[Namespace]:
    """A migrated namespace of its own (database, key prefix, queue prefix), destroyed afterwards."""
    from chat_devtools.namespace import Namespace

    namespace = Namespace.create(label)
    yield namespace
    namespace.destroy()


def engine_on(namespace: Namespace, **options: object) -> Iterator[Engine]:
    """An engine on the namespace's database, disposed afterwards."""
    engine = make_engine(namespace.settings.database_url, **options)
    yield engine
    engine.dispose()


def redis_on(namespace: Namespace) -> Iterator[redis.Redis]:
    """A Redis client of the namespace's server (use its key prefix), closed afterwards."""
    client = redis.Redis.from_url(namespace.settings.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def namespace() -> Iterator[Namespace]:
    """One migrated database, key prefix and queue prefix for the whole session."""
    yield from namespace_of("s")


@pytest.fixture
def fresh_namespace() -> Iterator[Namespace]:
    """A namespace of a test's own, for tests that break or count things."""
    yield from namespace_of("f")


@pytest.fixture(scope="session")
def engine(namespace: Namespace) -> Iterator[Engine]:
    """Engine on the session namespace's database."""
    yield from engine_on(namespace)


@pytest.fixture(scope="session")
def redis_client(namespace: Namespace) -> Iterator[redis.Redis]:
    """Redis client (use the namespace's key prefix)."""
    yield from redis_on(namespace)


@pytest.fixture(scope="session")
def system(request) -> Iterator[System]:
    """The API under gunicorn and both writers, as real processes, for the session namespace.

    Set ``API_BASE_URL`` to run the HTTP tests against a system started elsewhere (kind ingress, `make run`). The
    check comes first: with ``API_BASE_URL`` set, nothing here touches the local database, Redis or RabbitMQ.
    """
    if os.environ.get("API_BASE_URL"):
        pytest.skip("API_BASE_URL is set: tests that need local processes run only against a local system")
    namespace = request.getfixturevalue("namespace")
    from chat_devtools.processes import System

    sys_ = System(namespace, LOG_ROOT / namespace.name).start()
    yield sys_
    sys_.stop()


@pytest.fixture(scope="session")
def base_url(request) -> str:
    """Where the HTTP tests send requests: ``API_BASE_URL`` if set, else the local system."""
    external = os.environ.get("API_BASE_URL")
    if external:
        return external.rstrip("/")
    return request.getfixturevalue("system").base_url
