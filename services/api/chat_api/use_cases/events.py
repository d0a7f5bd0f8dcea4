"""The event log: an application's changes in commit order, read with a cursor (``GET …/events?after=&limit=``).

The writers record one row per applied create or edit (``chat_common.wire.events``); ids are allocated before the
commit, so a reader must not step over an id that may still commit. The rule (:func:`settle`): a page holds only
events below the first *unsettled* gap — a missing id followed by an event younger than ``EVENT_GAP_SETTLE_SECONDS``.
A gap behind an older event is a burned id (a rolled-back batch, an ignored row of a redelivered one) and is
stepped over. The cursor is the position in the log up to which the reader has everything: the last event returned,
or further when the scan found the rest of the log settled and none of the application's events in it (so a quiet
application's cursor keeps up, and does not fall out of the window while it polls).

Cursors are opaque to clients: the decimal id of a position (see the OpenAPI document). One below the oldest event
left after pruning (``EVENT_RETENTION_SECONDS``) is :class:`CursorExpired` (410): events after it are gone.
"""

from __future__ import annotations

from chat_api.model import CursorExpired, EventPage, EventScan
from chat_api.ports import EventLogPort, NumbersPort, Repository
from chat_api.use_cases.reads import from_replica
from chat_api.use_cases.tenants import TenantGate


def settle(scan: EventScan, after: int) -> EventPage:
    """The page a scan allows: its events below the first unsettled gap and within the checked range, and the cursor.

    Without a barrier the log is settled up to ``scan.settled_to`` and every event of the application up to there is
    in the scan (they are read in id order), so the cursor may move there; with one it stays at the last event
    returned (the gap may yet fill with one of this application's events).
    """
    events = [e for e in scan.events if e.position <= scan.settled_to]
    if scan.barrier is not None:
        events = [e for e in events if e.position < scan.barrier]
        position = events[-1].position if events else after
        return EventPage(events, position, has_more=False)
    position = max(after, scan.settled_to)
    return EventPage(events, position, has_more=scan.full or scan.settled_to < scan.top)


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
        settle_seconds: float,
        retention_seconds: int,
    ) -> None:
        self.gate = gate
        self.log = log
        self.repository = repository
        self.numbers = numbers
        self.settle_seconds = settle_seconds
        self.retention_seconds = retention_seconds

    async def page(self, token: str, after: int | None, limit: int) -> EventPage:
        """The application's events after cursor ``after`` (None: from the oldest kept), at most ``limit``."""
        application = await self.gate.tenant(token)
        replica = await from_replica(self.repository, self.numbers, application)
        start = after or 0
        scan = await self.log.scan(application.id, start, limit, self.settle_seconds, replica)
        if after is not None and expired(after, scan.oldest):
            raise CursorExpired(
                f"this cursor is older than the event log's retention ({self.retention_seconds} s): events after it"
                " were pruned; read the current state, then follow the log from a new cursor (omit after=)"
            )
        return settle(scan, start)
