"""A page of an application's event log and an event's JSON: one statement and one shape for every reader.

The API's ``GET /applications/{token}/events`` (``chat_api.adapters.events``) and the webhook dispatcher
(``services/webhook-dispatcher``) both read the log with :data:`SCAN` and render each event with
:meth:`LoggedEvent.public`, so a webhook's ``data`` is exactly the event as the REST API shows it: the two can never
disagree.

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
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text

from chat_common.wire.events import event_type

# Parameters: app (the application's id), after (the cursor), limit (the page size).
SCAN = text(
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


def chat_shape(chat_number: int, name: str, messages_count: int) -> dict:
    """The JSON shape of a chat (the API's and the webhooks')."""
    return {"chat_number": chat_number, "name": name, "messages_count": messages_count}


def message_shape(message_number: int, body: str) -> dict:
    """The JSON shape of a message (the API's and the webhooks')."""
    return {"message_number": message_number, "body": body}


def event_shape(
    position: int,
    type_: str,
    chat_number: int,
    message_number: int,
    version: int,
    committed_at: datetime.datetime,
    superseded: bool,
    resource: dict | None,
) -> dict:
    """The JSON shape of an event (``id`` is its cursor: opaque to clients); ``resource`` already in its shape."""
    shape: dict = {"id": str(position), "type": type_, "chat_number": chat_number}
    if message_number:
        shape["message_number"] = message_number
    shape["version"] = version
    shape["committed_at"] = committed_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    shape["superseded"] = superseded
    shape["resource"] = resource
    return shape


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event of a :data:`SCAN` page, with its chat or message as it is now (``None`` fields: the row is gone).

    ``current_version`` is the row's version now: above ``version`` when a later edit superseded the event.
    """

    position: int
    type: str
    chat_number: int
    message_number: int  # 0 for a chat's events
    version: int
    committed_at: datetime.datetime  # UTC, as the database stamped it
    chat_name: str | None
    messages_count: int | None
    body: str | None
    current_version: int | None

    @property
    def superseded(self) -> bool:
        """Whether the row was edited again after this event (its resource is that newer state)."""
        return self.current_version is not None and self.current_version > self.version

    @property
    def gone(self) -> bool:
        """Whether the event's chat or message no longer exists."""
        return (self.chat_name if self.message_number == 0 else self.body) is None

    def resource(self) -> dict | None:
        """The chat or message as it is now, in its JSON shape (None: gone)."""
        if self.gone:
            return None
        if self.message_number == 0:
            return chat_shape(self.chat_number, self.chat_name or "", int(self.messages_count or 0))
        return message_shape(self.message_number, self.body or "")

    def public(self) -> dict:
        """The event as ``GET /applications/{token}/events`` shows it."""
        return event_shape(
            self.position,
            self.type,
            self.chat_number,
            self.message_number,
            self.version,
            self.committed_at,
            self.superseded,
            self.resource(),
        )


@dataclass(frozen=True, slots=True)
class ScannedPage:
    """What one :data:`SCAN` read: the events (in id order), the log's head and its oldest id (None: empty)."""

    events: list[LoggedEvent]
    head: int
    oldest: int | None


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def scanned_page(rows: Sequence[Sequence]) -> ScannedPage:
    """Decode the rows of one :data:`SCAN` (the facts row is there even when the page is empty)."""
    head, oldest = rows[0][:2]
    events = []
    for row in rows:
        if row[2] is None:
            continue
        position, chat_number, message_number, version, committed_at, name, count, chat_v, body, message_v = row[2:]
        events.append(
            LoggedEvent(
                int(position),
                event_type(message_number, version),
                int(chat_number),
                int(message_number),
                int(version),
                committed_at.replace(tzinfo=datetime.UTC),
                name,
                None if count is None else int(count),
                body,
                _int_or_none(chat_v if message_number == 0 else message_v),
            )
        )
    return ScannedPage(events, int(head or 0), None if oldest is None else int(oldest))
