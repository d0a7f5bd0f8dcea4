"""The event log: an application's changes in commit order, read with a cursor (``GET …/events?after=&limit=``).

The writers record one row per applied create or edit (``chat_common.wire.events``) with ids handed out in commit
order and without gaps, so a page is simply the application's next events after the cursor, in id order: an id the
reader has not seen yet can never commit below one it has. The cursor (:func:`page_of`) is the position in the log up
to which the reader has everything: the last event of a full page, or else the log's head as the same read saw it (so
a quiet application's cursor keeps up, and does not fall out of the window while it polls).

Cursors are opaque to clients: the decimal id of a position (see the OpenAPI document). One below the oldest event
left after pruning (``EVENT_RETENTION_SECONDS``) is :class:`CursorExpired` (410): events after it are gone.
"""

from __future__ import annotations

from chat_api.model import CursorExpired, EventPage, EventScan
from chat_api.ports import EventLogPort, NumbersPort, Repository
from chat_api.use_cases.reads import from_replica
from chat_api.use_cases.tenants import TenantGate


def page_of(scan: EventScan, after: int) -> EventPage:
    """The page a scan makes, and its cursor.

    A full page continues after its last event (more may follow at once). A partial one holds every event of the
    application up to the log's head as the read saw it, so the cursor moves there (never backwards).
    """
    if scan.full:
        return EventPage(scan.events, scan.events[-1].position, has_more=True)
    last = scan.events[-1].position if scan.events else after
    return EventPage(scan.events, max(after, last, scan.head), has_more=False)


def expired(after: int, oldest: int | None) -> bool:
    """Whether events after cursor ``after`` were pruned: the oldest id left is beyond the next one."""
    return oldest is not None and after + 1 < oldest


class EventLogUseCase:
    """Reading an application's event log."""

    def __init__(
        self,
        gate: TenantGate,
        log: EventLogPort,
        repository: Repository,
        numbers: NumbersPort,
        retention_seconds: int,
    ) -> None:
        self.gate = gate
        self.log = log
        self.repository = repository
        self.numbers = numbers
        self.retention_seconds = retention_seconds

    async def page(self, token: str, after: int | None, limit: int) -> EventPage:
        """The application's events after cursor ``after`` (None: from the oldest kept), at most ``limit``."""
        application = await self.gate.tenant(token)
        replica = await from_replica(self.repository, self.numbers, application)
        start = after or 0
        scan = await self.log.scan(application.id, start, limit, replica)
        if after is not None and expired(after, scan.oldest):
            raise CursorExpired(
                f"this cursor is older than the event log's retention ({self.retention_seconds} s): events after it"
                " were pruned; read the current state, then follow the log from a new cursor (omit after=)"
            )
        return page_of(scan, start)
