"""The application (tenant) lifecycle: create, find, rename, delete — one implementation for the API and the operator.

Applications are written to MySQL synchronously (they are rare, and their token must work at once);
chats and messages go through the queues. Deleting removes rows in bounded batches, the numbering
counters in Redis, and whatever the registered cleanups remove (search documents).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError

from chat_common.idempotency import check_idempotency_key
from chat_common.keys import RedisKeys
from chat_common.tables import applications, chats, messages
from chat_common.validation import clean_name

log = logging.getLogger(__name__)

TOKEN_BYTES = 24  # 192 bits from the OS CSPRNG, 32 URL-safe characters
# What any token can look like: anything else names no application (and must not reach an ASCII column).
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_token() -> str:
    """An unguessable application token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


@dataclass(frozen=True, slots=True)
class Application:
    """An application; ``id`` is internal and never leaves the server."""

    token: str
    name: str
    chats_count: int
    id: int = 0

    def public(self) -> dict:
        """The JSON shape of an application."""
        return {"token": self.token, "name": self.name, "chats_count": self.chats_count}


_COLUMNS = (applications.c.id, applications.c.token, applications.c.name, applications.c.chats_count)


def _row(row) -> Application | None:
    return Application(token=row.token, name=row.name, chats_count=row.chats_count, id=row.id) if row else None


class Applications:
    """Application lifecycle over MySQL and the Redis numbering keys."""

    def __init__(
        self,
        engine: Engine,
        client: redis.Redis,
        keys: RedisKeys,
        *,
        max_name_chars: int = 255,
        cleanups: list[Callable[[int], None]] | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.keys = keys
        self.max_name_chars = max_name_chars
        self.cleanups = cleanups or []

    def create(self, name: object, idempotency_key: str | None = None) -> tuple[Application, bool]:
        """Create an application; with a key already used, return that application instead.

        Returns ``(application, created)``.
        """
        name = clean_name(name, self.max_name_chars)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        for _ in range(3):
            token = new_token()
            try:
                with self.engine.begin() as conn:
                    result = conn.execute(
                        applications.insert().values(token=token, name=name, idempotency_key=idempotency_key)
                    )
                return Application(token, name, 0, int(result.inserted_primary_key[0])), True
            except IntegrityError:
                if idempotency_key is not None and (existing := self.find_by_idempotency_key(idempotency_key)):
                    return existing, False
                # otherwise a token collision (2^-192): draw again
        raise RuntimeError("could not allocate a unique token")

    def find(self, token: str) -> Application | None:
        """The application with this token, or None."""
        if not TOKEN_SHAPE.fullmatch(token):
            return None
        with self.engine.connect() as conn:
            return _row(conn.execute(select(*_COLUMNS).where(applications.c.token == token)).first())

    def find_by_idempotency_key(self, key: str) -> Application | None:
        """The application created with this idempotency key, or None."""
        with self.engine.connect() as conn:
            return _row(conn.execute(select(*_COLUMNS).where(applications.c.idempotency_key == key)).first())

    def list(self, offset: int, limit: int) -> list[Application]:
        """Applications in creation order."""
        query = select(*_COLUMNS).order_by(applications.c.id).offset(offset).limit(limit)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def rename(self, token: str, name: object) -> Application | None:
        """Set an application's name; None when the token is unknown."""
        name = clean_name(name, self.max_name_chars)
        with self.engine.begin() as conn:
            conn.execute(
                update(applications).where(applications.c.token == token).values(name=name, updated_at=func.now(6))
            )
        return self.find(token)

    def delete(self, token: str, batch_size: int = 5000) -> int | None:
        """Delete an application with its chats, messages, counters and search documents.

        Rows go in bounded batches so no transaction holds locks for long. Returns the number of messages
        deleted, or None when the token is unknown. Writes still queued for it are dead-lettered by the writers.
        """
        application = self.find(token)
        if application is None:
            return None
        self.client.delete(self.keys.application(token))
        deleted = 0
        chat_ids = select(chats.c.id).where(chats.c.application_id == application.id)
        with self.engine.connect() as conn:
            while True:
                with conn.begin():
                    ids = (
                        conn.execute(select(messages.c.id).where(messages.c.chat_id.in_(chat_ids)).limit(batch_size))
                        .scalars()
                        .all()
                    )
                    if not ids:
                        break
                    conn.execute(messages.delete().where(messages.c.id.in_(ids)))
                deleted += len(ids)
                log.info("deleting application: %d messages so far", deleted)
            with conn.begin():
                conn.execute(chats.delete().where(chats.c.application_id == application.id))
                conn.execute(applications.delete().where(applications.c.id == application.id))
        # Again: a create racing the delete may have re-seeded the counters from the rows being deleted.
        self.client.delete(self.keys.application(token))
        for cleanup in self.cleanups:
            cleanup(application.id)
        return deleted

    def close(self) -> None:
        """Release the engine's connections and the Redis client."""
        self.engine.dispose()
        self.client.close()


def build_applications(settings, engine: Engine, client: redis.Redis) -> Applications:
    """The application lifecycle wired with the configured search backend's cleanup (API and operator use this)."""
    from chat_common.search import build_search

    search = build_search(settings, engine)
    return Applications(
        engine,
        client,
        RedisKeys(settings.redis_key_prefix),
        max_name_chars=settings.max_name_chars,
        cleanups=[search.delete_application],
    )
