"""Pruning of the tenants' event log (``chat_common.wire.events``): rows older than the retention window go, in chunks.

The ids after the window's start are found once per run: the first event committed inside the window (``boundary``).
Every row below it was committed before it (ids are committed in id order: ``chat_common.wire.events``), so before
the window, give or take the moment between an insert's ``NOW(6)`` and its commit, and is deleted, ``chunk`` rows per
short transaction in id order, so the writers' inserts at the other end of the table never wait long on it.

The newest event is always kept, even when older than the window: the API tells a cursor whose events were pruned
(410) by comparing it with the oldest id left, which an empty table could not say.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, func, literal_column, select, text

from chat_common.schema.tables import events

log = logging.getLogger(__name__)

# The window's start, on the server's clock (the clock that stamped committed_at).
_CUTOFF = func.timestampadd(literal_column("SECOND"), -bindparam("retention"), func.now(6))

# The first event inside the window: the old prefix is read once, in id order, up to it.
_FIRST_RETAINED = select(events.c.id).where(events.c.committed_at >= _CUTOFF).order_by(events.c.id).limit(1)
_NEWEST = select(func.max(events.c.id))
# In id order (a PRIMARY range), so the binary log replays the same rows; SQLAlchemy Core has no DELETE … ORDER BY.
_DELETE_CHUNK = text("DELETE FROM events WHERE id < :keep_from ORDER BY id LIMIT :chunk")


@dataclass
class PruneReport:
    """What one pruning run did."""

    deleted: int = 0
    chunks: int = 0
    kept_from: int | None = None  # the oldest id left (None: the log is empty)
    seconds: float = 0.0


def prune_events(engine: Engine, retention_seconds: int, chunk: int) -> PruneReport:
    """Delete the events committed before the last ``retention_seconds``, ``chunk`` rows per transaction."""
    started = time.monotonic()
    report = PruneReport()
    with engine.connect() as conn:
        boundary = conn.execute(_FIRST_RETAINED, {"retention": retention_seconds}).scalar()
        newest = conn.execute(_NEWEST).scalar()
    if newest is None:
        return report
    keep_from = newest if boundary is None else min(boundary, newest)
    report.kept_from = keep_from
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(_DELETE_CHUNK, {"keep_from": keep_from, "chunk": chunk}).rowcount
        if deleted:
            report.deleted += deleted
            report.chunks += 1
            log.info("event log: %d old events pruned so far (below id %d)", report.deleted, keep_from)
        if deleted < chunk:
            break
    report.seconds = time.monotonic() - started
    return report
