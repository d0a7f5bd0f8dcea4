"""MySQL reads of an application's event log (``events``, filled by the writers: ``chat_common.wire.events``).

One statement per page, :data:`chat_common.wire.event_pages.SCAN` — the one the webhook dispatcher reads too, so a
webhook and this API always show an event alike (that module says why the statement needs no gap check, and what
``head`` and ``oldest`` are).
"""

from __future__ import annotations

from chat_api.adapters.database import Database
from chat_api.adapters.replica import ReadRouter
from chat_api.model import Chat, Event, EventScan, Message
from chat_common.wire.event_pages import SCAN, LoggedEvent, scanned_page


def _event(logged: LoggedEvent) -> Event:
    """The API's event for one event of a :data:`SCAN` page."""
    resource: Chat | Message | None
    if logged.gone:
        resource = None
    elif logged.message_number == 0:
        resource = Chat(logged.chat_number, logged.chat_name or "", int(logged.messages_count or 0))
    else:
        resource = Message(logged.message_number, logged.body or "")
    return Event(
        logged.position,
        logged.type,
        logged.chat_number,
        logged.message_number,
        logged.version,
        logged.committed_at,
        resource,
        logged.current_version,
    )


class SqlEventLog:
    """The event log's reads, on the replica when the caller allows it and one may serve (as pages of chats)."""

    def __init__(self, router: ReadRouter) -> None:
        self.router = router

    async def scan(self, application_id: int, after: int, limit: int, from_replica: bool = False) -> EventScan:
        """The application's next events after ``after``, with the log's head and oldest id (module docstring)."""

        async def read(db: Database) -> list[tuple]:
            return await db.rows(SCAN, {"app": application_id, "after": after, "limit": limit})

        page = scanned_page(await self.router.run(from_replica, read))
        events = [_event(logged) for logged in page.events]
        return EventScan(events, full=len(events) >= limit, oldest=page.oldest, head=page.head)
