"""Ports: what the service layer needs from the outside world, and nothing more.

A port is a :class:`typing.Protocol` naming exactly the methods :class:`chat_api.services.ChatService` calls on
one collaborator. The service is typed against these, never against the adapters, so the rules can run over
anything shaped the same way:

- the real adapters (``chat_api.adapters.*`` and :class:`chat_common.tenancy.Applications`) satisfy them
  structurally, without inheriting from them — ``tests/unit/test_service_ports.py`` checks every adapter against
  its port, method by method, so a signature drifting apart fails a unit test;
- in-memory fakes in ``tests/unit/fakes.py`` satisfy them too, and run the whole service layer (and the Falcon
  app over it) in milliseconds with no MariaDB, Redis or RabbitMQ reachable (``make test-unit``).

The value types that cross a port (:class:`Allocation`, :class:`Claim`, :class:`Recorded`, the numbering status
codes, :class:`KeyInUse`, :class:`PublishError`, :class:`SearchUnavailable`) stay where the adapters define them.
Ports say nothing about how connections are opened or closed beyond what the service itself calls; the process
lifecycle (``chat_api.app.Lifecycle``) wires the concrete adapters it builds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from chat_api.adapters.idempotency import Claim, Recorded
from chat_api.adapters.numbering import Allocation
from chat_api.adapters.search import SearchReader  # the one definition of that port; re-exported here
from chat_api.model import Application, Chat, Message

__all__ = [
    "Applications",
    "IdempotencyPort",
    "NumberingPort",
    "Publisher",
    "RecoveryPort",
    "Repository",
    "SearchReader",
    "StoredKeysPort",
]


@runtime_checkable
class Repository(Protocol):
    """MySQL reads of chats and messages, and the edits applied in the request (adapter: ``SqlRepository``).

    Reads raise :class:`chat_api.model.NotFound` naming what is missing (application, chat or message).
    """

    async def find_chat(self, token: str, number: int) -> Chat:
        """One chat of the token's application."""
        ...

    async def list_chats(self, token: str, after: int, offset: int, limit: int) -> list[Chat]:
        """Chats numbered above ``after``, in number order, skipping ``offset``, at most ``limit``."""
        ...

    async def find_message(self, token: str, chat_number: int, number: int) -> Message:
        """One message."""
        ...

    async def list_messages(self, token: str, chat_number: int, after: int, offset: int, limit: int) -> list[Message]:
        """Messages numbered above ``after``, in number order, skipping ``offset``, at most ``limit``."""
        ...

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none)."""
        ...

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none)."""
        ...

    async def locate(self, token: str, chat_number: int) -> int:
        """The application id of a chat that exists; NotFound otherwise."""
        ...

    async def rename_chat(self, application_id: int, chat_number: int, name: str, version: int) -> bool:
        """Apply a rename if newer than the stored one; False when the row is missing or newer."""
        ...

    async def edit_message(
        self, application_id: int, chat_number: int, message_number: int, body: str, version: int
    ) -> bool:
        """Apply a message edit if newer than the stored one; False when the row is missing or newer."""
        ...

    async def ping(self) -> bool:
        """True when the database answers."""
        ...


@runtime_checkable
class NumberingPort(Protocol):
    """Atomic numbering and edit versions (adapter: ``Numbering``, Redis + Lua).

    Every call answers an :class:`Allocation` whose ``status`` is one of ``chat_api.adapters.numbering``'s codes
    (OK, APPLICATION_NOT_LOADED, CHAT_NOT_LOADED, RECOVERING, NOT_FOUND) and whose ``epoch`` is the numbering
    epoch it ran under (``<id>:fresh|recovered:<unix time>``, '' while numbering is closed).
    """

    async def new_chat(self, token: str) -> Allocation:
        """Allocate the application's next chat number."""
        ...

    async def new_message(self, token: str, chat_number: int) -> Allocation:
        """Allocate the chat's next message number."""
        ...

    async def edit_chat(self, token: str, chat_number: int) -> Allocation:
        """Check the chat exists and stamp a rename with a fresh version."""
        ...

    async def edit_message(self, token: str, chat_number: int, message_number: int) -> Allocation:
        """Check the message exists and stamp an edit with a fresh version."""
        ...

    async def load_application(self, token: str, epoch: str, application_id: int, last_chat_number: int) -> bool:
        """Seed an application's counters; refused (False) if the epoch changed meanwhile."""
        ...

    async def load_chat(self, token: str, epoch: str, chat_number: int, last_message_number: int) -> bool:
        """Seed one chat's message counter; refused (False) if the epoch changed meanwhile."""
        ...

    async def ping(self) -> bool:
        """True when the numbering store answers."""
        ...


@runtime_checkable
class Publisher(Protocol):
    """Durable hand-off to the writers' queues (adapter: ``ConfirmingPublisher``, RabbitMQ with confirms)."""

    @property
    def is_ready(self) -> bool:
        """True while the publisher can publish without waiting."""
        ...

    async def start(self) -> None:
        """Start connecting in the background."""
        ...

    async def publish(self, queue: str, body: bytes) -> None:
        """Return once the broker confirmed; raise ``PublishError`` otherwise."""
        ...

    async def close(self) -> None:
        """Stop; pending publishes fail."""
        ...


@runtime_checkable
class IdempotencyPort(Protocol):
    """Claims and records of idempotency keys (adapter: ``IdempotencyStore``, Redis)."""

    async def claim(self, token: str, scope: str, key: str) -> Claim:
        """Claim the key, or return what an earlier request recorded; ``KeyInUse`` while another holds it."""
        ...

    async def record(self, token: str, scope: str, key: str, outcome: Recorded) -> None:
        """Remember what the claimed key was given."""
        ...

    async def release(self, token: str, scope: str, key: str) -> None:
        """Give a claimed key back (no number was given)."""
        ...


@runtime_checkable
class StoredKeysPort(Protocol):
    """The keys the writers stored beside the rows (adapter: ``StoredKeys``, MySQL)."""

    async def find(self, token: str, chat_number: int, key: str) -> Recorded | None:
        """What a create with this key (in this chat, or 0 for chats) was given, if it was written."""
        ...


@runtime_checkable
class RecoveryPort(Protocol):
    """Re-opening numbering after the numbering store lost its data (adapter: ``NumberingRecovery``)."""

    async def attempt(self) -> bool:
        """One bounded attempt; True when numbering is open (again)."""
        ...


@runtime_checkable
class Applications(Protocol):
    """The application lifecycle (adapter: :class:`chat_common.tenancy.Applications`).

    Synchronous, shared with the operator: the service calls it through :func:`asyncio.to_thread`, never on the
    event loop. ``create`` and ``rename`` validate the name (:class:`chat_api.model.Invalid`).
    """

    def create(self, name: object, idempotency_key: str | None = None) -> tuple[Application, bool]:
        """Create one; ``(application, created)`` — False when the key was used before."""
        ...

    def find(self, token: str) -> Application | None:
        """The application with this token, or None."""
        ...

    def list(self, offset: int, limit: int) -> list[Application]:
        """Applications in creation order."""
        ...

    def rename(self, token: str, name: object) -> Application | None:
        """Set the name; None when the token is unknown."""
        ...

    def delete(self, token: str, batch_size: int = 5000) -> int | None:
        """Delete it with everything in it; the number of messages deleted, or None when unknown."""
        ...
