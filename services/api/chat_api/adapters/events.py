"""MySQL reads of an application's event log (``events``, filled by the writers: ``chat_common.wire.events``).

One statement per page: the application's next events after the cursor (``ix_events_application_id``), each joined
to its chat and message as they are now, and — in the same statement, so from the same snapshot — the sequence's
``last_id`` (``head``) and the oldest id left (``oldest``, which tells a pruned cursor).

No gap check is needed: the writers commit their events in id order, one allocation-to-commit window at a time, so a
snapshot that shows an id shows every id below it that will ever exist (a rolled-back batch leaves none). ``head``
is the last id committed as this snapshot sees it: when the page is not full, the application has no event between
its last one and ``head``, and the cursor may move there (so a quiet application's cursor keeps up with the log and
does not fall out of the retention window). A read replica applies the primary's transactions in commit order
(MariaDB's parallel replication always commits in order; MySQL needs ``replica_preserve_commit_order``, its default
since 8.0.27), so the same holds there, only later. The statement is a ``WITH``: MariaDB's statement time limit
applies to it as to every read (MySQL's hint form does not reach a ``WITH``).
"""

from __future__ import annotations

import datetime

from sqlalchemy import text

from chat_api.adapters.database import Database
from chat_api.adapters.replica import ReadRouter
from chat_api.model import Chat, Event, EventScan, Message
from chat_common.wire.events import event_type

_SCAN = text(
    """
WITH page AS (
    SELECT id, chat_number, message_number, version, committed_at FROM events
    WHERE application_id = :app AND id > :after ORDER BY id LIMIT :limit
), facts AS (
    SELECT (SELECT last_id FROM event_sequence WHERE id = 1) AS head, (SELECT MIN(id) FROM events) AS oldest
)
SELECT facts.head, facts.oldest,
    page.id, page.chat_number, page.message_number, page.version, page.committed_at,
    c.name, c.messages_count, c.version, m.body, m.version
FROM facts
LEFT JOIN page ON TRUE
LEFT JOIN chats c ON c.application_id = :app AND c.number = page.chat_number
LEFT JOIN messages m ON m.application_id = :app AND m.chat_id = c.id AND m.number = page.message_number
ORDER BY page.id
"""
)


def _event(row: tuple) -> Event:
    """An event from a row of :data:`_SCAN` (its columns from ``page.id`` on)."""
    position, chat_number, message_number, version, committed_at, name, count, chat_version, body, message_version = row
    resource: Chat | Message | None
    if message_number == 0:
        resource = None if name is None else Chat(chat_number, name, count)
        current = chat_version
    else:
        resource = None if body is None else Message(message_number, body)
        current = message_version
    return Event(
        position,
        event_type(message_number, version),
        chat_number,
        message_number,
        version,
        committed_at.replace(tzinfo=datetime.UTC),
        resource,
        current,
    )


class SqlEventLog:
    """The event log's reads, on the replica when the caller allows it and one may serve (as pages of chats)."""

    def __init__(self, router: ReadRouter) -> None:
        self.router = router

    async def scan(self, application_id: int, after: int, limit: int, from_replica: bool = False) -> EventScan:
        """The application's next events after ``after``, with the log's head and oldest id (module docstring)."""

        async def read(db: Database) -> list[tuple]:
            return await db.rows(_SCAN, {"app": application_id, "after": after, "limit": limit})

        rows = await self.router.run(from_replica, read)
        head, oldest = rows[0][:2]  # the facts row is there even when the page is empty
        events = [_event(row[2:]) for row in rows if row[2] is not None]
        return EventScan(
            events,
            full=len(events) >= limit,
            oldest=None if oldest is None else int(oldest),
            head=int(head or 0),
        )
