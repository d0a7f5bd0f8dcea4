"""Keeping the search index in step with MySQL, after each commit, without ever blocking or losing a write.

After a batch is committed its messages are bulk-indexed. Whatever the search backend does not take (cluster down,
overloaded, a shard unavailable) is remembered in a Redis sorted set, the *backlog*; the writer drains it every few
seconds by re-reading those messages' current body and version from MySQL (the source of truth) and indexing them
again. Versions make the order of these writes irrelevant. ``chat_search_backlog`` shows the backlog's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis
from sqlalchemy import Engine, select, tuple_

from chat_common import metrics
from chat_common.schema.tables import chat_messages, chats, messages
from chat_common.search import IndexedMessage, SearchBackend, SearchUnavailable
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.keys import RedisKeys

log = logging.getLogger(__name__)


def indexable_messages():
    """SELECT of messages with what a search document needs (the chat number joined in).

    The join names the tenant first (``chats.application_id = messages.application_id``): on a database sharded
    by application the chat row is on the message's shard, and both sides are reached through their tenant key.
    """
    return select(
        messages.c.id,
        messages.c.application_id,
        chats.c.number.label("chat_number"),
        messages.c.number.label("message_number"),
        messages.c.body,
        messages.c.version,
    ).select_from(chat_messages)


def backlog_query(wanted: set[tuple[int, int, int]]):
    """The current rows of these (application id, chat number, message number), as :func:`indexable_messages`."""
    return indexable_messages().where(
        tuple_(messages.c.application_id, chats.c.number, messages.c.number).in_(list(wanted))
    )


def as_document(row) -> IndexedMessage:
    """A row of :func:`indexable_messages` as a search document."""
    return IndexedMessage(row.application_id, row.chat_number, row.message_number, row.body, row.version)


def backlog_member(m: IndexedMessage) -> str:
    """Backlog entry naming one message."""
    return f"{m.application_id}:{m.chat_number}:{m.message_number}"


class SearchIndexer:
    """Indexes committed messages; defers what fails to the backlog and drains it later."""

    def __init__(self, backend: SearchBackend, engine: Engine, client: redis.Redis, keys: RedisKeys) -> None:
        self.backend = backend
        self.engine = engine
        self.client = client
        self.keys = keys
        self.enabled = backend.needs_indexing  # the embedded backend reads the rows themselves
        # After a failure, defer straight to the backlog for a while: a hanging cluster must not stall every batch.
        self.pause_seconds = 5.0
        self._paused_until = 0.0

    def after_commit(self, applied: Sequence[tuple[int, MessageUpsert]]) -> None:
        """Index the messages a batch just committed."""
        if not self.enabled:
            return
        docs = [
            IndexedMessage(c.application_id, c.chat_number, c.message_number, c.body, c.version) for _, c in applied
        ]
        self._index_or_defer(docs)

    def _index_or_defer(self, docs: Sequence[IndexedMessage]) -> list[IndexedMessage]:
        """Index; returns what is settled (indexed, or rejected for good); defers the rest."""
        try:
            outcome = self.backend.bulk(docs)
        except SearchUnavailable as exc:
            log.warning("search unavailable, %d documents deferred: %s", len(docs), exc)
            self._paused_until = time.monotonic() + self.pause_seconds
            self._defer(docs)
            return []
        for message, reason in outcome.rejected:
            log.error("search rejected message %s for good: %s", backlog_member(message), reason)
        if outcome.retry:
            self._defer(outcome.retry)
        return outcome.indexed + [m for m, _ in outcome.rejected]

    def _defer(self, docs: Sequence[IndexedMessage]) -> None:
        metrics.SEARCH_BULK_FAILURES.inc(len(docs))
        now = time.time()
        self.client.zadd(self.keys.search_backlog, {backlog_member(m): now for m in docs}, nx=True)
        metrics.SEARCH_BACKLOG.set(self.client.zcard(self.keys.search_backlog))

    def drain(self, limit: int = 500) -> int:
        """Re-index up to ``limit`` deferred messages from their current rows; returns how many were settled."""
        if not self.enabled:
            return 0
        members = [m.decode() for m in self.client.zrange(self.keys.search_backlog, 0, limit - 1)]
        if not members:
            metrics.SEARCH_BACKLOG.set(0)
            return 0
        try:
            self.backend.ensure_ready()
        except SearchUnavailable as exc:
            log.info("search still unavailable (%d+ deferred): %s", len(members), exc)
            return 0
        wanted = {tuple(int(part) for part in m.split(":")) for m in members}
        with self.engine.connect() as conn:
            docs = [as_document(row) for row in conn.execute(backlog_query(wanted))]
        settled = {backlog_member(m) for m in self._index_or_defer(docs)} if docs else set()
        found = {backlog_member(m) for m in docs}
        settled |= {m for m in members if m not in found}  # rows gone (application deleted): nothing to index
        if settled:
            self.client.zrem(self.keys.search_backlog, *settled)
        metrics.SEARCH_BACKLOG.set(self.client.zcard(self.keys.search_backlog))
        return len(settled)
