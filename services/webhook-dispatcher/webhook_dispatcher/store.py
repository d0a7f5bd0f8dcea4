"""The dispatcher's SQL: the event log (``events``, read with the API's own statement), the endpoints and their leases
(``webhook_endpoints``) and the deliveries held back per chat (``webhook_held``).

Blocking calls on a SQLAlchemy engine (PyMySQL); the event loop runs them on a small thread pool. Every write that
belongs to an endpoint is conditioned on this process holding its lease (``lease_owner = :owner``), and the move of
``position`` also on the position the worker started from (a compare-and-set): an admin's replay (which sets
``position`` and deletes the held rows) or another process that took the endpoint over makes it match nothing, and
the worker starts again from what the row says.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import Engine, text

from chat_common.wire.event_pages import SCAN, LoggedEvent, ScannedPage, scanned_page

_ENDPOINT_COLUMNS = (
    "id, application_id, name, url, event_types, secret_sealed, previous_secret_sealed, previous_secret_expires_at,"
    " position, state, failing_since"
)
# Claims free or expired leases and renews this process's own, in one statement; disabled endpoints are not claimed.
_CLAIM = text(
    """
UPDATE webhook_endpoints SET lease_owner = :owner, lease_until = NOW(6) + INTERVAL :lease_us MICROSECOND
WHERE enabled = 1 AND state <> 'disabled'
  AND (lease_owner = :owner OR lease_owner IS NULL OR lease_until IS NULL OR lease_until < NOW(6))
"""
)
_LEASED = text(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE lease_owner = :owner AND lease_until > NOW(6)")
# Leases this process no longer wants: endpoints disabled (by it or their manager) since it claimed them.
_LET_GO = text(
    "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL"
    " WHERE lease_owner = :owner AND (enabled = 0 OR state = 'disabled')"
)
_RELEASE = text("UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = :owner")
_POSITION = text("SELECT position FROM webhook_endpoints WHERE id = :e AND lease_owner = :owner")
_ADVANCE = text(
    "UPDATE webhook_endpoints SET position = :new"
    " WHERE id = :e AND position = :old AND lease_owner = :owner AND state <> 'disabled'"
)
_HOLD = text(
    "INSERT IGNORE INTO webhook_held"
    " (application_id, endpoint_id, event_id, chat_number, attempts, next_attempt_at, first_failed_at)"
    " VALUES ((SELECT application_id FROM webhook_endpoints WHERE id = :e),"
    " :e, :event, :chat, :attempts, :next, :first)"
)
# Each held chat's head (its oldest held event): the one retried; the others wait behind it.
_HEADS = text(
    """
SELECT h.chat_number, h.event_id, h.attempts, h.next_attempt_at, h.first_failed_at
FROM webhook_held h
JOIN (SELECT chat_number, MIN(event_id) AS head FROM webhook_held WHERE endpoint_id = :e GROUP BY chat_number) f
  ON f.chat_number = h.chat_number AND f.head = h.event_id
WHERE h.endpoint_id = :e
ORDER BY h.event_id
"""
)
_CHAT_HEAD = text(
    "SELECT chat_number, event_id, attempts, next_attempt_at, first_failed_at FROM webhook_held"
    " WHERE endpoint_id = :e AND chat_number = :chat ORDER BY event_id LIMIT 1"
)
_SETTLE = text("DELETE FROM webhook_held WHERE endpoint_id = :e AND event_id = :event")
_RESCHEDULE = text(
    "UPDATE webhook_held SET attempts = :attempts, next_attempt_at = :next, first_failed_at = :first"
    " WHERE endpoint_id = :e AND event_id = :event"
)
_HEALTH = text(
    "UPDATE webhook_endpoints SET state = :state, failing_since = :since,"
    " last_success_at = COALESCE(:success, last_success_at), last_failure_at = COALESCE(:failure, last_failure_at),"
    " last_error = COALESCE(:error, last_error), updated_at = NOW(6)"
    " WHERE id = :e AND lease_owner = :owner AND state <> 'disabled'"
)
_DISABLE = text(
    "UPDATE webhook_endpoints SET state = 'disabled', disabled_at = NOW(6), disabled_reason = :reason,"
    " last_failure_at = NOW(6), last_error = :error, lease_owner = NULL, lease_until = NULL, updated_at = NOW(6)"
    " WHERE id = :e AND lease_owner = :owner"
)
_HEAD = text("SELECT last_id FROM event_sequence WHERE id = 1")
_HELD_FACTS = text(
    "SELECT COUNT(*), MIN(e.committed_at) FROM webhook_held h JOIN events e ON e.id = h.event_id"
    " WHERE h.endpoint_id = :e"
)
_NEXT_COMMITTED = text(
    "SELECT committed_at FROM events WHERE application_id = :app AND id > :after ORDER BY id LIMIT 1"
)
_BY_STATE = text("SELECT state, COUNT(*) FROM webhook_endpoints GROUP BY state")
ENDPOINT_STATES = ("healthy", "failing", "disabled")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A claimed endpoint as its row says (the sealed secrets stay sealed until a worker needs them)."""

    id: int
    application_id: int
    name: str
    url: str
    event_types: frozenset[str]
    secret_sealed: str
    previous_secret_sealed: str | None
    previous_secret_expires_at: datetime.datetime | None  # UTC
    position: int
    state: str
    failing_since: datetime.datetime | None  # UTC

    @property
    def secret_context(self) -> str:
        """The associated data its secrets are sealed with (``TokenSealer.seal_for``)."""
        return f"webhook:{self.application_id}:{self.name}"

    @property
    def host(self) -> str:
        """The URL's host: what logs name (never the URL, whose path or query may hold a tenant's secret)."""
        try:
            return urlsplit(self.url).hostname or "?"
        except ValueError:
            return "?"


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """A held delivery: ``attempts`` 0 while it waits behind its chat's head."""

    chat_number: int
    event_id: int
    attempts: int
    next_attempt_at: datetime.datetime  # UTC
    first_failed_at: datetime.datetime | None  # UTC


def _utc(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.replace(tzinfo=datetime.UTC)


def _naive(value: datetime.datetime | None) -> datetime.datetime | None:
    """A UTC time as the DATETIME columns hold it."""
    return None if value is None else value.astimezone(datetime.UTC).replace(tzinfo=None)


def _endpoint(row: Sequence) -> Endpoint:
    types = frozenset(part.strip() for part in row[4].split(",") if part.strip())
    return Endpoint(
        int(row[0]),
        int(row[1]),
        row[2],
        row[3],
        types,
        row[5],
        row[6],
        _utc(row[7]),
        int(row[8]),
        row[9],
        _utc(row[10]),
    )


def _held(row: Sequence) -> HeldEvent:
    return HeldEvent(int(row[0]), int(row[1]), int(row[2]), _utc(row[3]), _utc(row[4]))  # type: ignore[arg-type]


class Store:
    """The dispatcher's reads and writes, as process ``owner`` (module docstring)."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self.engine = engine
        self.owner = owner

    # -- leases ----------------------------------------------------------------------------------------------------
    def claim(self, lease_seconds: float) -> list[Endpoint]:
        """Renew this process's leases, claim the free or expired ones; the endpoints it now holds."""
        with self.engine.begin() as conn:
            conn.execute(_LET_GO, {"owner": self.owner})
            conn.execute(_CLAIM, {"owner": self.owner, "lease_us": int(lease_seconds * 1_000_000)})
        with self.engine.connect() as conn:
            return [_endpoint(row) for row in conn.execute(_LEASED, {"owner": self.owner})]

    def release(self) -> None:
        """Give every lease of this process back (on shutdown), so another process takes over at once."""
        with self.engine.begin() as conn:
            conn.execute(_RELEASE, {"owner": self.owner})

    def position(self, endpoint_id: int) -> int | None:
        """The endpoint's position as its row says now (None: no longer this process's)."""
        with self.engine.connect() as conn:
            value = conn.execute(_POSITION, {"e": endpoint_id, "owner": self.owner}).scalar()
        return None if value is None else int(value)

    # -- the log ---------------------------------------------------------------------------------------------------
    def head(self) -> int:
        """The last id of the whole log (every tenant's)."""
        with self.engine.connect() as conn:
            return int(conn.execute(_HEAD).scalar() or 0)

    def scan(self, application_id: int, after: int, limit: int) -> ScannedPage:
        """The application's next events after ``after`` — the API's own statement and snapshot rules."""
        with self.engine.connect() as conn:
            rows = conn.execute(SCAN, {"app": application_id, "after": after, "limit": limit}).all()
        return scanned_page(rows)

    def event(self, application_id: int, event_id: int) -> LoggedEvent | None:
        """One event of the application (None: pruned from the log)."""
        page = self.scan(application_id, event_id - 1, 1)
        return page.events[0] if page.events and page.events[0].position == event_id else None

    # -- positions and held deliveries -----------------------------------------------------------------------------
    def advance(self, endpoint_id: int, old: int, new: int, held: Sequence[HeldEvent]) -> bool:
        """In one transaction, hold ``held`` and move the position from ``old`` to ``new``; False (nothing done) when
        the row's position is not ``old`` any more or the lease is gone."""
        with self.engine.begin() as conn:
            moved = conn.execute(_ADVANCE, {"e": endpoint_id, "old": old, "new": new, "owner": self.owner})
            if moved.rowcount != 1:  # rowcount counts matched rows (PyMySQL's FOUND_ROWS), so old == new matches too
                conn.rollback()
                return False
            if held:
                conn.execute(
                    _HOLD,
                    [
                        {
                            "e": endpoint_id,
                            "event": h.event_id,
                            "chat": h.chat_number,
                            "attempts": h.attempts,
                            "next": _naive(h.next_attempt_at),
                            "first": _naive(h.first_failed_at),
                        }
                        for h in held
                    ],
                )
        return True

    def heads(self, endpoint_id: int) -> list[HeldEvent]:
        """Each held chat's head, oldest event first."""
        with self.engine.connect() as conn:
            return [_held(row) for row in conn.execute(_HEADS, {"e": endpoint_id})]

    def chat_head(self, endpoint_id: int, chat_number: int) -> HeldEvent | None:
        """The chat's oldest held event (None: the chat is not held any more)."""
        with self.engine.connect() as conn:
            row = conn.execute(_CHAT_HEAD, {"e": endpoint_id, "chat": chat_number}).first()
        return None if row is None else _held(row)

    def settle(self, endpoint_id: int, event_id: int) -> None:
        """A held event was delivered or given up: no longer held."""
        with self.engine.begin() as conn:
            conn.execute(_SETTLE, {"e": endpoint_id, "event": event_id})

    def reschedule(self, endpoint_id: int, held: HeldEvent) -> None:
        """A held event failed again: its attempts and next time."""
        with self.engine.begin() as conn:
            conn.execute(
                _RESCHEDULE,
                {
                    "e": endpoint_id,
                    "event": held.event_id,
                    "attempts": held.attempts,
                    "next": _naive(held.next_attempt_at),
                    "first": _naive(held.first_failed_at),
                },
            )

    # -- the endpoint's state --------------------------------------------------------------------------------------
    def record_health(
        self,
        endpoint_id: int,
        state: str,
        failing_since: datetime.datetime | None,
        last_success_at: datetime.datetime | None,
        last_failure_at: datetime.datetime | None,
        last_error: str | None,
    ) -> None:
        """The endpoint's delivery state as the worker found it."""
        with self.engine.begin() as conn:
            conn.execute(
                _HEALTH,
                {
                    "e": endpoint_id,
                    "owner": self.owner,
                    "state": state,
                    "since": _naive(failing_since),
                    "success": _naive(last_success_at),
                    "failure": _naive(last_failure_at),
                    "error": None if last_error is None else last_error[:255],
                },
            )

    def disable(self, endpoint_id: int, reason: str, error: str) -> None:
        """Disable the endpoint (410, or failing too long) and let its lease go."""
        with self.engine.begin() as conn:
            conn.execute(
                _DISABLE, {"e": endpoint_id, "owner": self.owner, "reason": reason[:255], "error": error[:255]}
            )

    # -- what the metrics sample -----------------------------------------------------------------------------------
    def backlog(self, endpoint: Endpoint, position: int) -> tuple[int, datetime.datetime | None]:
        """Held deliveries and the commit time of the oldest undelivered event (None: nothing waits)."""
        with self.engine.connect() as conn:
            held, oldest_held = conn.execute(_HELD_FACTS, {"e": endpoint.id}).one()
            next_event = conn.execute(_NEXT_COMMITTED, {"app": endpoint.application_id, "after": position}).scalar()
        times = [t for t in (oldest_held, next_event) if t is not None]
        return int(held or 0), _utc(min(times)) if times else None

    def count_by_state(self) -> dict[str, int]:
        """Endpoints of every application by state (healthy, failing, disabled; each present)."""
        with self.engine.connect() as conn:
            found = {state: int(count) for state, count in conn.execute(_BY_STATE)}
        return {state: found.get(state, 0) for state in ENDPOINT_STATES}
