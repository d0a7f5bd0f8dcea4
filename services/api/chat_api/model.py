"""What the API's service layer hands back and the errors it raises; no HTTP and no I/O here."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from chat_common.search import SearchHit, SearchUnavailable
from chat_common.tenancy.applications import Application, TenantLimits, Usage
from chat_common.tenancy.webhooks import EndpointChanges, EndpointSpec, WebhookEndpoint
from chat_common.validation import Invalid
from chat_common.wire.event_pages import chat_shape, event_shape, message_shape
from chat_common.wire.heartbeats import WriterHeartbeat

__all__ = [
    "Allocation",
    "AllocationStatus",
    "Application",
    "Chat",
    "Claim",
    "Conflict",
    "CursorExpired",
    "DatabaseUnavailable",
    "EndpointChanges",
    "EndpointSpec",
    "Event",
    "EventPage",
    "EventScan",
    "Invalid",
    "KeyInUse",
    "Keyed",
    "Message",
    "NotFound",
    "Numbered",
    "Page",
    "PublishError",
    "RateLimited",
    "Recorded",
    "SearchHit",
    "SearchUnavailable",
    "Suspended",
    "TenantLimits",
    "Unavailable",
    "Usage",
    "WebhookEndpoint",
    "WriterHeartbeat",
]


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat as clients see it."""

    chat_number: int
    name: str
    messages_count: int

    def public(self) -> dict:
        """The JSON shape of a chat."""
        return chat_shape(self.chat_number, self.name, self.messages_count)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as clients see it."""

    message_number: int
    body: str

    def public(self) -> dict:
        """The JSON shape of a message."""
        return message_shape(self.message_number, self.body)


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an application's event log, with its resource as it is now (``None``: the row is gone).

    ``position`` is the entry's place in the log (its cursor); ``current_version`` the row's version now: above the
    event's ``version`` when a later edit superseded it (the resource then shows that later state).
    """

    position: int
    type: str
    chat_number: int
    message_number: int  # 0 for a chat's events
    version: int
    committed_at: datetime.datetime  # UTC, as the database stamped it
    resource: Chat | Message | None
    current_version: int | None

    @property
    def superseded(self) -> bool:
        """Whether the row was edited again after this event (its resource is that newer state)."""
        return self.current_version is not None and self.current_version > self.version

    def public(self) -> dict:
        """The JSON shape of an event (``id`` is its cursor: opaque to clients)."""
        resource = None if self.resource is None else self.resource.public()
        return event_shape(
            self.position,
            self.type,
            self.chat_number,
            self.message_number,
            self.version,
            self.committed_at,
            self.superseded,
            resource,
        )


@dataclass(frozen=True, slots=True)
class EventScan:
    """What one read of the event log found (:class:`chat_api.ports.EventLogPort`), from one snapshot.

    ``events``: the application's next events after the cursor (at most the page size, in id order). ``full``: the
    page size was reached. ``oldest``: the oldest id left in the log (None: empty), which tells a pruned cursor.
    ``head``: the last id of the whole log (every tenant's) committed as the read saw it: no event can commit at or
    below it later (the writers commit ids in order, without gaps).
    """

    events: list[Event]
    full: bool
    oldest: int | None
    head: int


@dataclass(frozen=True, slots=True)
class EventPage:
    """A page of the event log: its events and the position to continue after (``next``, a cursor).

    ``has_more``: more events may be read at once (the page was full); False when the log is read to its end — poll
    again later with ``next``.
    """

    events: list[Event]
    next: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: ``has_next`` tells whether a further page exists."""

    items: list
    page: int
    per_page: int
    has_next: bool


class NotFound(Exception):
    """The token, chat or message does not exist (or is not visible to this token)."""


class CursorExpired(Exception):
    """An event-log cursor from before the retention window: events after it were pruned (410 Gone)."""


class UnknownApplication(NotFound):
    """No application has this token (or it is a rotated-away one past its grace): 404 when the token came in the
    path, 401 (``invalid_token``) when it came in ``Authorization`` — the answer to a bad credential."""

    def __init__(self, message: str = "application not found") -> None:
        super().__init__(message)


class Conflict(Exception):
    """The request collides with another one (same idempotency key); retry after ``retry_after`` s if given."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Suspended(Exception):
    """The application is suspended: its tokens are refused (403) until it is resumed; nothing was deleted."""


class RateLimited(Exception):
    """The application made more requests this second than its limit allows (429, retry after ``retry_after``)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(Exception):
    """A dependency is down or recovering: the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StatementTimedOut(Unavailable):
    """A read ran into the statement time limit (``READ_STATEMENT_TIMEOUT_SECONDS``) and the server stopped it.

    503 with ``Retry-After`` rather than a 4xx: the API cannot tell a read that is expensive by its shape (a search of
    a huge chat) from one that is slow because the database is busy, and the same request may well pass on a quiet
    server; the message says how to make it cheaper.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the query took longer than {seconds:g} s and was stopped; retry later, or make it cheaper"
            " (a longer search fragment, or page with after=)",
            retry_after=5,
        )


class NumberingStillOpening(Exception):
    """A hash slot used for the first time was not open within the bounded wait (its opening is still under way)."""


class DatabaseUnavailable(Unavailable):
    """MySQL cannot be reached or used right now (503 with ``Retry-After``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("database unavailable", retry_after=1)
        self.detail = detail


# -- values that cross the numbering, idempotency and publishing ports -------------------------------------------


class AllocationStatus(IntEnum):
    """What a numbering call answered (the integers the Redis script returns: :mod:`chat_api.adapters.numbering`)."""

    OK = 0
    APPLICATION_NOT_LOADED = -1  # the application's counters are not in the numbering store: load them from MySQL
    NOT_FOUND = -2  # no such chat (or message, for an edit)
    RECOVERING = -3  # the slot's numbering is closed: it lost its data (or never opened)
    CHAT_NOT_LOADED = -4  # the chat's message counter is not loaded
    LIMIT_REACHED = -5  # the tenant's maxChats: no number was taken


@dataclass(frozen=True, slots=True)
class Allocation:
    """What a numbering call answered: a status code, the epoch it ran under, and on success (id, value)."""

    status: int  # an AllocationStatus
    epoch: str
    application_id: int = 0
    value: int = 0  # the new number, or the edit's version


@dataclass(frozen=True, slots=True)
class Recorded:
    """The outcome of the first request with an idempotency key."""

    application_id: int
    number: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim's answer: ``earlier`` when a request with this key was already given a number."""

    earlier: Recorded | None
    epoch: str  # the numbering epoch at the time of the claim ('' while numbering is closed)


class KeyInUse(Exception):
    """Another request with the same key is still being answered; its claim lapses in ``retry_after`` seconds."""

    def __init__(self, key: str, retry_after: int) -> None:
        super().__init__(key)
        self.retry_after = retry_after


class PublishError(Exception):
    """The broker did not confirm the message: the caller must not report success."""


class Keyed(NamedTuple):
    """The idempotency key of a create and its request's fingerprint, carried to the writer with the row."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Numbered:
    """A number (or edit version) handed out for one create or edit, and what its publish must carry.

    ``published_at`` is the stamp taken just before the number was handed out (a replay: just before its
    idempotency claim read it): the publish carries it and must be confirmed within the publish timeout of it, which
    numbering recovery relies on (:mod:`chat_api.numbering.reopening`).
    """

    application_id: int
    number: int  # the new number, or the edit's version
    published_at: float
    replayed: bool = False  # an earlier request with the same idempotency key was given this number
    keyed: Keyed | None = None
