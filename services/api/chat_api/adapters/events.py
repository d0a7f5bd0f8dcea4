"""MySQL reads of an application's event log (``events``, filled by the writers: ``chat_common.wire.events``).

One statement per page: the application's next events after the cursor (``ix_events_application_id``), each joined
to its chat and message as they are now, and — in the same statement, so from the same snapshot — what the log says
about ids that may still commit below them (the settling rule is :mod:`chat_api.use_cases.events`):

- ``lo``: the cursor, or the page's last event older than the settle time if later — every id below an event that
  old was allocated before it and has had its chance to commit — and never below the oldest id left (below it is
  pruned history, not gaps);
- ``top``: the page's last id when the page is full, else the newest id of the whole log; ``hi``: ``top``, but at
  most the last present id within ``SCAN_IDS`` above ``lo`` (a bound on the rows the check reads, so a tenant whose
  events are sparse among others' catches up in steps instead of one read of the whole log). ``hi`` is always an
  id that exists (or ``lo``): a missing id at or below it then has its follower inside the checked range;
- ``barrier``: the first id in ``(lo, hi]`` whose predecessor is missing and that is younger than the settle time
  (a transaction holding the missing id may still commit), found on the primary key with no row transferred.

Time is the server's (``NOW(6)``, the clock that stamped ``committed_at``). With a read replica the settle time grows
by the replica's lag bound: a missing id there may also be a commit not replicated yet. The statement is a ``WITH``:
MariaDB's statement time limit applies to it as to every read (MySQL's hint form does not reach a ``WITH``).
"""

from __future__ import annotations

import datetime

from sqlalchemy import text

from chat_api.adapters.database import Database
from chat_api.adapters.replica import ReadRouter
from chat_api.model import Chat, Event, EventScan, Message
from chat_common.wire.events import event_type

# At most this many ids of the whole log are checked for unsettled gaps per page (~a few ms of PRIMARY range).
SCAN_IDS = 50_000

_SCAN = text(
    """
WITH page AS (
    SELECT id, chat_number, message_number, version, committed_at FROM events
    WHERE application_id = :app AND id > :after ORDER BY id LIMIT :limit
), span AS (
    SELECT
        (SELECT MIN(id) FROM events) AS oldest,
        GREATEST(:after, COALESCE((SELECT MIN(id) FROM events), 1) - 1, COALESCE((SELECT MAX(id) FROM page
            WHERE committed_at < TIMESTAMPADD(MICROSECOND, -:settle_us, NOW(6))), 0)) AS lo,
        CASE WHEN (SELECT COUNT(*) FROM page) >= :limit THEN (SELECT MAX(id) FROM page)
             ELSE COALESCE((SELECT MAX(id) FROM events), 0) END AS top
), bounds AS (
    SELECT lo, oldest, GREATEST(lo, top) AS top, GREATEST(lo, LEAST(top, COALESCE(
        (SELECT MAX(e.id) FROM events e WHERE e.id > span.lo AND e.id <= span.lo + :scan),
        (SELECT MIN(e.id) FROM events e WHERE e.id > span.lo),
        span.lo))) AS hi
    FROM span
)
SELECT b.hi, b.top, b.oldest,
    (SELECT MIN(f.id) FROM events f
        WHERE f.id > b.lo + 1 AND f.id <= b.hi
        AND f.committed_at >= TIMESTAMPADD(MICROSECOND, -:settle_us, NOW(6))
        AND NOT EXISTS (SELECT 1 FROM events p WHERE p.id = f.id - 1)) AS barrier,
    page.id, page.chat_number, page.message_number, page.version, page.committed_at,
    c.name, c.messages_count, c.version, m.body, m.version
FROM bounds b
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

    def __init__(self, router: ReadRouter, scan_ids: int = SCAN_IDS) -> None:
        self.router = router
        self.scan_ids = scan_ids

    async def scan(
        self, application_id: int, after: int, limit: int, settle_seconds: float, from_replica: bool = False
    ) -> EventScan:
        """The application's next events after ``after`` with the settling facts (see the module's docstring)."""
        lag = self.router.lag_bound() or 0.0

        async def read(db: Database) -> list[tuple]:
            settle = settle_seconds + (lag if db is not self.router.primary else 0.0)
            params = {
                "app": application_id,
                "after": after,
                "limit": limit,
                "settle_us": int(settle * 1_000_000),
                "scan": self.scan_ids,
            }
            return await db.rows(_SCAN, params)

        rows = await self.router.run(from_replica, read)
        hi, top, oldest, barrier = rows[0][:4]  # the bounds row is there even when the page is empty
        events = [_event(row[4:]) for row in rows if row[4] is not None]
        return EventScan(
            events,
            settled_to=int(hi),
            barrier=None if barrier is None else int(barrier),
            full=len(events) >= limit,
            oldest=None if oldest is None else int(oldest),
            top=int(top),
        )
