"""Apply a batch of chat upserts: one multi-row ``INSERT … ON DUPLICATE KEY UPDATE`` per batch."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.dialects.mysql import insert

from chat_common.schema.tables import applications, chats
from chat_common.wire.contracts import ChatUpsert, ContractError
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
            rows, keys = [], []
            for delivery, change in changes:
                if change.application_id in existing:
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
                store_keys(conn, keys)
        if existing:
            self.context.redis.sadd(self.context.keys.dirty_applications, *existing)
        return result
