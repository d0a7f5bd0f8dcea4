"""Apply a batch of message upserts: resolve chat ids, one multi-row upsert, then mark chats dirty.

Every row carries its application id (migration 0004), and every read of ``messages`` here names it first: the
unique key is ``(application_id, chat_id, number)``, the key a database sharded by application routes on.

A message can arrive before its chat's row (the chat-writer is a separate consumer): it goes to a
delayed-retry queue, never dropped. A message for an application that no longer exists is dead-lettered.

After the commit the rows are announced to the API's live streams (``chat_common.wire.announcements``), at least once:
every create, and every edit whose version is the one stored once the batch is applied — including a row already
stored with that very version, which is what a redelivered batch finds when its writer died between the commit and
the announcement (a stream drops numbers it has delivered and edits it has seen). Never announced: an edit the
stored row already outdoes (an older edit arriving late), which a stream would show as the newest body. Telling
them apart costs one locking read of the batch's rows right after the upsert (the rows are locked by it already),
made only for batches that may hold such rows: edits, and deliveries seen before (redelivered, retried). A create
is then announced with the row's stored body (an edit that got there first wins).

The same rule decides what goes into the tenants' event log (``chat_common.wire.events``), in the upsert's own
transaction, as its last statement: so the stored rows are read for such batches whether or not this writer
announces.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import Select, case, func, literal_column, select, tuple_
from sqlalchemy.dialects.mysql import insert
from sqlalchemy.exc import IntegrityError

from chat_common.schema.tables import applications, chats, messages
from chat_common.search import SearchUnavailable, build_search
from chat_common.wire.announcements import Committed
from chat_common.wire.contracts import ContractError, MessageUpsert
from chat_common.wire.events import Change, record_events
from chat_common.wire.idempotency import store_keys
from chat_common.wire.keys import dirty_chat_mark
from chat_common.writing.consumer import BatchResult, Delivery, decode_batch
from chat_common.writing.writer import WriterContext
from message_writer.indexing import SearchIndexer

# A literal, not a bound parameter: pymysql only batches rows when the ON DUPLICATE suffix has none.
NOW_6 = literal_column("NOW(6)")
log = logging.getLogger(__name__)

_upsert = insert(messages)
# Assigned left to right: `version` last, because the others compare the incoming version with the stored one.
UPSERT_MESSAGES = _upsert.on_duplicate_key_update(
    [
        ("body", case((_upsert.inserted.version > messages.c.version, _upsert.inserted.body), else_=messages.c.body)),
        ("updated_at", case((_upsert.inserted.version > messages.c.version, NOW_6), else_=messages.c.updated_at)),
        ("version", func.greatest(messages.c.version, _upsert.inserted.version)),
    ]
)

ChatKey = tuple[int, int]  # (application id, chat number)
RowKey = tuple[int, int]  # (chat row id, message number): chat row ids are unique across applications
StoredKey = tuple[int, int, int]  # (application id, chat row id, message number): the unique key of messages


def stored_rows(keys: Sequence[StoredKey]) -> Select:
    """Locking read of (chat id, number, version, body) of the rows with these keys.

    The application id leads, as in the unique key ``(application_id, chat_id, number)`` the read goes through.
    """
    return (
        select(messages.c.chat_id, messages.c.number, messages.c.version, messages.c.body)
        .where(tuple_(messages.c.application_id, messages.c.chat_id, messages.c.number).in_(list(keys)))
        .with_for_update()
    )


def may_be_stored(changes: Sequence[tuple[Delivery, MessageUpsert]]) -> bool:
    """Whether a batch may hold upserts the stored rows outdo or equal: edits, and deliveries seen before.

    A first delivery of a create (version 0) is new unless it is a duplicate publish (announcing that again is
    harmless), so such batches — nearly all of them — skip the read of the stored rows.
    """
    return any(d.seen_before or c.version for d, c in changes)


def to_announce(
    applied: Sequence[tuple[int, MessageUpsert]], stored: dict[RowKey, tuple[int, str]] | None
) -> list[Committed]:
    """What to announce (and record in the event log) of the applied upserts, given the rows as stored after the
    upsert (None: not read).

    Creates: always, with the stored body. Edits: when their version is the stored one (newly applied, or already
    stored by a run of this batch that died before announcing). Edits older than the stored row: never.
    """
    announced = []
    for cid, c in applied:
        row = stored.get((cid, c.message_number)) if stored is not None else None
        if row is None:  # not read: as delivered
            announced.append(Committed(c.application_id, c.chat_number, c.message_number, c.body, c.version))
        elif c.version == 0:
            announced.append(Committed(c.application_id, c.chat_number, c.message_number, row[1], 0))
        elif c.version == row[0]:
            announced.append(Committed(c.application_id, c.chat_number, c.message_number, c.body, c.version))
    return announced


def as_events(committed: Sequence[Committed]) -> list[Change]:
    """The event-log rows of what :func:`to_announce` found applied."""
    return [(c.application_id, c.chat_number, c.message_number, c.version) for c in committed]


class ChatIdCache:
    """Bounded LRU of (application id, chat number) -> chat row id; chat ids never change while they exist."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[ChatKey, int] = OrderedDict()

    def get(self, key: ChatKey) -> int | None:  # noqa: D102
        chat_id = self._ids.get(key)
        if chat_id is not None:
            self._ids.move_to_end(key)
        return chat_id

    def put(self, key: ChatKey, chat_id: int) -> None:  # noqa: D102
        self._ids[key] = chat_id
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def clear(self) -> None:  # noqa: D102
        self._ids.clear()


class MessageBatchWriter:
    """Batch handler of the message-writer."""

    def __init__(self, context: WriterContext, indexer: SearchIndexer | None = None) -> None:
        self.context = context
        self.chat_ids = ChatIdCache()
        self.indexer = indexer

    @classmethod
    def with_search(cls, context: WriterContext) -> MessageBatchWriter:
        """The production handler: the configured search backend kept in step after each commit."""
        backend = build_search(context.settings, context.engine)
        try:
            backend.ensure_ready()
        except SearchUnavailable as exc:  # keep writing MySQL; the backlog drain creates the index later
            log.warning("search backend not ready at start: %s", exc)
        return cls(context, SearchIndexer(backend, context.engine, context.redis, context.keys))

    def drain_search_backlog(self) -> None:
        """The writer's periodic chore (wired in ``__main__``): re-index what search did not take earlier."""
        if self.indexer is not None:
            self.indexer.drain()

    def _resolve(self, conn, keys: set[ChatKey]) -> dict[ChatKey, int]:
        found = {k: cid for k in keys if (cid := self.chat_ids.get(k)) is not None}
        missing = list(keys - found.keys())
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            query = select(chats.c.id, chats.c.application_id, chats.c.number).where(
                tuple_(chats.c.application_id, chats.c.number).in_(chunk)
            )
            for row in conn.execute(query):
                key = (row.application_id, row.number)
                found[key] = row.id
                self.chat_ids.put(key, row.id)
        return found

    @staticmethod
    def _stored(conn, rows: Sequence[StoredKey]) -> dict[RowKey, tuple[int, str]]:
        """``(version, body)`` of these rows as this transaction's upsert left them, by (chat row id, number).

        A locking read: a plain one would answer from the transaction's snapshot, older than a concurrent writer's
        newer edit that the upsert kept. The upsert holds these rows' locks already, so it waits for nobody.
        """
        found: dict[RowKey, tuple[int, str]] = {}
        unique = list(dict.fromkeys(rows))
        for start in range(0, len(unique), 500):
            for row in conn.execute(stored_rows(unique[start : start + 500])):
                found[(row.chat_id, row.number)] = (row.version, row.body)
        return found

    def __call__(self, deliveries: Sequence[Delivery]) -> BatchResult:
        """Write every applicable message of the batch in one transaction."""
        max_chars = self.context.settings.max_body_chars
        changes, result = decode_batch(deliveries, lambda raw: MessageUpsert.decode(raw, max_chars), (ContractError,))
        if not changes:
            return result
        applied: list[tuple[int, MessageUpsert]] = []
        committed: list[Committed] = []
        try:
            with self.context.engine.begin() as conn:
                chat_ids = self._resolve(conn, {(c.application_id, c.chat_number) for _, c in changes})
                unresolved = [(d, c) for d, c in changes if (c.application_id, c.chat_number) not in chat_ids]
                if unresolved:
                    wanted = {c.application_id for _, c in unresolved}
                    alive = set(conn.execute(select(applications.c.id).where(applications.c.id.in_(wanted))).scalars())
                    for delivery, change in unresolved:
                        if change.application_id in alive:
                            result.retry.append((delivery, "chat not written yet"))
                        else:
                            result.dead.append((delivery, "application gone: it was deleted before this write"))
                applied = [
                    (chat_ids[(c.application_id, c.chat_number)], c)
                    for _, c in changes
                    if (c.application_id, c.chat_number) in chat_ids
                ]
                if applied:
                    conn.execute(
                        UPSERT_MESSAGES,
                        [
                            {
                                "application_id": c.application_id,
                                "chat_id": cid,
                                "number": c.message_number,
                                "body": c.body,
                                "version": c.version,
                            }
                            for cid, c in applied
                        ],
                    )
                    stored = None  # nearly every batch: first deliveries of creates, applied as delivered
                    seen_before = any(d.seen_before for d, _ in changes)
                    if may_be_stored(changes):
                        stored = self._stored(conn, [(c.application_id, cid, c.message_number) for cid, c in applied])
                    committed = to_announce(applied, stored)
                    store_keys(
                        conn,
                        (
                            {
                                "application_id": c.application_id,
                                "chat_number": c.chat_number,
                                "idempotency_key": c.idempotency_key,
                                "number": c.message_number,
                                "fingerprint": c.fingerprint,
                            }
                            for _, c in applied
                            if c.idempotency_key is not None
                        ),
                    )
                    # Last before the commit: it holds the event sequence's lock until then (chat_common.wire.events).
                    record_events(conn, as_events(committed), seen_before)
        except IntegrityError:
            # A cached chat id whose application was deleted meanwhile: forget the cache, let the loop retry.
            self.chat_ids.clear()
            raise
        if applied:
            if self.context.announcer is not None:  # committed: live streams may show these rows now
                self.context.announcer.committed(committed)
                self.context.announcer.flush()  # at once, before the dirty marks and search (never raises)
            marks = {dirty_chat_mark(c.application_id, cid) for cid, c in applied}  # keyed by application (count sync)
            self.context.redis.sadd(self.context.keys.dirty_chats, *marks)
            if self.indexer is not None:
                self.indexer.after_commit(applied)
        return result
