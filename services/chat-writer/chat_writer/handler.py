"""Apply a batch of chat upserts: one multi-row ``INSERT … ON DUPLICATE KEY UPDATE`` per batch.

Each applied change is recorded in the tenants' event log (``chat_common.wire.events``) in the same transaction, by
the message-writer's rule (``message_writer.handler.to_announce``): every create, and a rename only when its version
is the one stored after the upsert (a late, older rename records nothing). Telling them apart costs one locking read
of the batch's chats, made only for batches that may hold such rows (renames, deliveries seen before).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, func, literal_column, select, tuple_
from sqlalchemy.dialects.mysql import insert

from chat_common.schema.tables import applications, chats
from chat_common.wire.contracts import ChatUpsert, ContractError
from chat_common.wire.events import Change, record_events
from chat_common.wire.idempotency import store_keys
from chat_common.writing.consumer import BatchResult, Delivery, decode_batch
from chat_common.writing.writer import WriterContext

# A literal, not a bound parameter: pymysql only batches rows when the ON DUPLICATE suffix has none.
NOW_6 = literal_column("NOW(6)")
_upsert = insert(chats)
# MySQL applies these left to right, so `version` must be assigned last: the others compare against the old one.
UPSERT_CHATS = _upsert.on_duplicate_key_update(
    [
        ("name", case((_upsert.inserted.version > chats.c.version, _upsert.inserted.name), else_=chats.c.name)),
        ("updated_at", case((_upsert.inserted.version > chats.c.version, NOW_6), else_=chats.c.updated_at)),
        ("version", func.greatest(chats.c.version, _upsert.inserted.version)),
    ]
)

ChatKey = tuple[int, int]  # (application id, chat number): the unique key of chats


def stored_versions(conn, keys: Sequence[ChatKey]) -> dict[ChatKey, int]:
    """The versions of these chats as this transaction's upsert left them (a locking read, as the message-writer's:
    a plain one would answer from the snapshot; the upsert holds these rows' locks already)."""
    found: dict[ChatKey, int] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), 500):
        query = (
            select(chats.c.application_id, chats.c.number, chats.c.version)
            .where(tuple_(chats.c.application_id, chats.c.number).in_(unique[start : start + 500]))
            .with_for_update()
        )
        for row in conn.execute(query):
            found[(row.application_id, row.number)] = row.version
    return found


def applied_events(changes: Sequence[ChatUpsert], stored: dict[ChatKey, int] | None) -> list[Change]:
    """The event-log rows of the applied changes, given the stored versions after the upsert (None: not read, every
    change is a first delivery of a create). Creates always; renames whose version is the stored one."""
    return [
        (c.application_id, c.chat_number, 0, c.version)
        for c in changes
        if c.version == 0 or stored is None or stored.get((c.application_id, c.chat_number)) == c.version
    ]


class ChatBatchWriter:
    """Batch handler of the chat-writer."""

    def __init__(self, context: WriterContext) -> None:
        self.context = context

    def __call__(self, deliveries: Sequence[Delivery]) -> BatchResult:
        """Write every valid chat upsert of the batch in one transaction; mark the applications dirty."""
        max_chars = self.context.settings.max_name_chars
        changes, result = decode_batch(deliveries, lambda raw: ChatUpsert.decode(raw, max_chars), (ContractError,))
        if not changes:
            return result
        with self.context.engine.begin() as conn:
            wanted = {c.application_id for _, c in changes}
            existing = set(conn.execute(select(applications.c.id).where(applications.c.id.in_(wanted))).scalars())
            rows, keys, applied = [], [], []
            for delivery, change in changes:
                if change.application_id in existing:
                    applied.append(change)
                    if change.idempotency_key is not None:
                        keys.append(
                            {
                                "application_id": change.application_id,
                                "chat_number": 0,
                                "idempotency_key": change.idempotency_key,
                                "number": change.chat_number,
                                "fingerprint": change.fingerprint,
                            }
                        )
                    rows.append(
                        {
                            "application_id": change.application_id,
                            "number": change.chat_number,
                            "name": change.name,
                            "version": change.version,
                        }
                    )
                else:
                    result.dead.append((delivery, "application gone: it was deleted before this write"))
            if rows:
                conn.execute(UPSERT_CHATS, rows)
                stored = None
                seen_before = any(d.seen_before for d, _ in changes)
                if seen_before or any(c.version for c in applied):  # renames, or deliveries seen before
                    stored = stored_versions(conn, [(c.application_id, c.chat_number) for c in applied])
                store_keys(conn, keys)
                # Last before the commit: it holds the event sequence's lock until then (chat_common.wire.events).
                record_events(conn, applied_events(applied, stored), seen_before)
        if existing:
            self.context.redis.sadd(self.context.keys.dirty_applications, *existing)
        return result
