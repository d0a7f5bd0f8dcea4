"""What the API's service layer hands back and the errors it raises; no HTTP and no I/O here."""

from __future__ import annotations

from dataclasses import dataclass

from chat_common.tenancy import Application
from chat_common.validation import Invalid

__all__ = [
    "Application",
    "Chat",
    "Conflict",
    "DatabaseUnavailable",
    "Invalid",
    "Message",
    "NotFound",
    "Page",
    "RateLimited",
    "Suspended",
    "Unavailable",
]


@dataclass(frozen=True, slots=True)
class Chat:
    """A chat as clients see it."""

    chat_number: int
    name: str
    messages_count: int

    def public(self) -> dict:
        """The JSON shape of a chat."""
        return {"chat_number": self.chat_number, "name": self.name, "messages_count": self.messages_count}


@dataclass(frozen=True, slots=True)
class Message:
    """A message as clients see it."""

    message_number: int
    body: str

    def public(self) -> dict:
        """The JSON shape of a message."""
        return {"message_number": self.message_number, "body": self.body}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: ``has_next`` tells whether a further page exists."""

    items: list
    page: int
    per_page: int
    has_next: bool


class NotFound(Exception):
    """The token, chat or message does not exist (or is not visible to this token)."""


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


class NumberingStillOpening(Exception):
    """A hash slot used for the first time was not open within the bounded wait (its opening is still under way)."""


class DatabaseUnavailable(Unavailable):
    """MySQL cannot be reached or used right now (503 with ``Retry-After``)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("database unavailable", retry_after=1)
        self.detail = detail
