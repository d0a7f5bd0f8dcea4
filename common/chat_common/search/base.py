"""The search interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One matching message."""

    message_number: int
    body: str
    score: float | None = None


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    """What the message-writer hands the backend after a commit."""

    application_id: int
    chat_number: int
    message_number: int
    body: str
    version: int


@dataclass
class BulkOutcome:
    """How each document of a bulk request fared."""

    indexed: list[IndexedMessage] = field(default_factory=list)
    retry: list[IndexedMessage] = field(default_factory=list)  # try again later (overload, shard unavailable)
    rejected: list[tuple[IndexedMessage, str]] = field(default_factory=list)  # will never succeed as sent


class SearchUnavailable(Exception):
    """The search backend cannot answer right now (the API answers 503)."""


class SearchBackend(Protocol):
    """Search in one chat's messages by a fragment of text, case-insensitively."""

    name: str  # a label for metrics
    # Whether written messages must be sent to the backend (the message-writer's indexer is off when not).
    needs_indexing: bool

    def search(self, application_id: int, chat_number: int, query: str, offset: int, limit: int) -> list[SearchHit]:
        """Best matches first."""
        ...

    def bulk(self, messages: Sequence[IndexedMessage]) -> BulkOutcome:
        """Index messages, reporting each one's fate; transport failures raise :class:`SearchUnavailable`."""
        ...

    def index(self, messages: Sequence[IndexedMessage]) -> None:
        """Make written messages searchable (no-op where search reads the database itself)."""
        ...

    def delete_application(self, application_id: int) -> None:
        """Forget every document of an application."""
        ...

    def ensure_ready(self) -> None:
        """Create indices, templates and aliases if missing (idempotent)."""
        ...

    def refresh(self) -> None:
        """Make recent writes visible to searches."""
        ...


def escape_like(fragment: str, escape: str = "\\") -> str:
    """Escape LIKE wildcards so a fragment matches literally."""
    return fragment.replace(escape, escape * 2).replace("%", escape + "%").replace("_", escape + "_")
