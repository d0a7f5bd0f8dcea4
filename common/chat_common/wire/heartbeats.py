"""The writer heartbeat, as stored in Redis: the writers write it (:func:`format_heartbeat`), numbering recovery in
the API and the tests read it (:func:`parse_heartbeat`). Its format is defined here, once."""

from __future__ import annotations

from typing import NamedTuple


class WriterHeartbeat(NamedTuple):
    """One writer's report: how many messages it holds unacknowledged, and when (unix time); and, for numbering
    recovery, the lowest publish stamp among those it holds (None: none held), the stamp of the latest
    first-attempt delivery it received, how many of those it received so far, its broker connection number and
    the heartbeat's own sequence number (see :class:`chat_common.writing.consumer.LoopState`)."""

    unacked: int
    at: float
    oldest: float | None = None
    last: float = 0.0
    firsts: int = 0
    session: int = 0
    beat: int = 0
    deliveries: int = 0


def format_heartbeat(
    unacked: int,
    at: float,
    oldest: float | None = None,
    last: float = 0.0,
    firsts: int = 0,
    session: int = 0,
    beat: int = 0,
    deliveries: int = 0,
) -> str:
    """The value a writer stores under its id in the heartbeat hash:
    ``"<unacked>:<unix time>[:<oldest>:<last>:<firsts>:<session>:<beat>:<deliveries>]"`` (``oldest`` empty when
    None). Heartbeats of the previous version have no ``deliveries`` (read as 0)."""
    short = f"{unacked}:{at:.3f}"
    if (oldest, last, firsts, session, beat, deliveries) == (None, 0.0, 0, 0, 0, 0):
        return short
    lowest = "" if oldest is None else f"{oldest:.6f}"
    return f"{short}:{lowest}:{last:.6f}:{firsts}:{session}:{beat}:{deliveries}"


def parse_heartbeat(raw: bytes | str) -> WriterHeartbeat:
    """Read a stored heartbeat; a malformed one reads as ``(0, 0.0)`` — held nothing, infinitely old."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split(":")
    try:
        if len(parts) == 2:
            return WriterHeartbeat(int(parts[0]), float(parts[1]))
        unacked, at, oldest, last, firsts, session, beat, *rest = parts
        if len(rest) > 1:
            raise ValueError(text)
        lowest = float(oldest) if oldest else None
        # upgrade-only: remove after release 0.2 (heartbeats of writers before 0.2 carry no ``deliveries``)
        deliveries = int(rest[0]) if rest else 0
        return WriterHeartbeat(
            int(unacked), float(at), lowest, float(last), int(firsts), int(session), int(beat), deliveries
        )
    except ValueError:
        return WriterHeartbeat(0, 0.0)
