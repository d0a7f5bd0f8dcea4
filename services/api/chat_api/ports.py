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
from chat_common.tenancy import TenantLimits, Usage

__all__ = [
    "Applications",
    "IdempotencyPort",
    "NumberingPort",
    "Publisher",
    "RateLimiterPort",
    "RecoveryPort",
    "Repository",
    "SearchReader",
    "StoredKeysPort",
    "TenantDirectoryPort",
]


@runtime_checkable
class Repository(Protocol):
    """MySQL reads of chats and messages, and the edits applied in the request (adapter: ``SqlRepository``).

    Reads raise :class:`chat_api.model.NotFound` naming what is missing (application, chat or message).
    """

    async def find_chat(self, application_id: int, number: int) -> Chat:
        """One chat of the application (read on the primary)."""
        ...

    async def list_chats(
        self, application_id: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Chat]:
        """Chats numbered above ``after``, in number order, skipping ``offset``, at most ``limit``.

        ``from_replica``: the caller accepts an answer up to :meth:`replica_lag_bound` seconds old."""
        ...

    async def find_message(self, application_id: int, chat_number: int, number: int) -> Message:
        """One message (read on the primary)."""
        ...

    async def list_messages(
        self, application_id: int, chat_number: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Message]:
        """Messages numbered above ``after``, in number order, skipping ``offset``, at most ``limit``."""
        ...

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none; the primary's answer)."""
        ...

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none; the primary's answer)."""
        ...

    async def locate(self, application_id: int, chat_number: int) -> None:
        """Nothing when the chat exists; NotFound naming what is missing otherwise."""
        ...

    def replica_lag_bound(self) -> float | None:
        """How far behind the primary a read replica's answers may be now (seconds); None: none may serve."""
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
    (OK, APPLICATION_NOT_LOADED, CHAT_NOT_LOADED, RECOVERING, NOT_FOUND, LIMIT_REACHED) and whose ``epoch`` is the
    numbering epoch it ran under (``<id>:fresh|recovered:<unix time>``, '' while numbering is closed). Counters are
    keyed by application id: every token of an application numbers into one sequence.
    """

    async def new_chat(self, application_id: int, max_chats: int = 0) -> Allocation:
        """Allocate the application's next chat number; LIMIT_REACHED (no number taken) at ``max_chats``."""
        ...

    async def new_message(self, application_id: int, chat_number: int) -> Allocation:
        """Allocate the chat's next message number."""
        ...

    async def edit_chat(self, application_id: int, chat_number: int) -> Allocation:
        """Check the chat exists and stamp a rename with a fresh version."""
        ...

    async def edit_message(self, application_id: int, chat_number: int, message_number: int) -> Allocation:
        """Check the message exists and stamp an edit with a fresh version."""
        ...

    async def load_application(
        self, application_id: int, epoch: str, last_chat_number: int, legacy_token: str = ""
    ) -> bool:
        """Seed an application's counters (never below the pre-upgrade per-token counters of ``legacy_token``);
        refused (False) if the epoch changed meanwhile."""
        ...

    async def load_chat(
        self, application_id: int, epoch: str, chat_number: int, last_message_number: int, legacy_token: str = ""
    ) -> bool:
        """Seed one chat's message counter (as :meth:`load_application`); refused if the epoch changed."""
        ...

    async def last_edit(self, application_id: int) -> float | None:
        """Unix time of the application's last edit (rename or message edit); None if it never edited."""
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

    async def claim(self, application_id: int, scope: str, key: str) -> Claim:
        """Claim the key (per application: all its tokens), or return what an earlier request recorded;
        ``KeyInUse`` while another holds it."""
        ...

    async def record(self, application_id: int, scope: str, key: str, outcome: Recorded) -> None:
        """Remember what the claimed key was given."""
        ...

    async def release(self, application_id: int, scope: str, key: str) -> None:
        """Give a claimed key back (no number was given)."""
        ...


@runtime_checkable
class StoredKeysPort(Protocol):
    """The keys the writers stored beside the rows (adapter: ``StoredKeys``, MySQL)."""

    async def find(self, application_id: int, chat_number: int, key: str) -> Recorded | None:
        """What a create with this key (in this chat, or 0 for chats) was given, if it was written."""
        ...


@runtime_checkable
class RecoveryPort(Protocol):
    """Re-opening numbering after the numbering store lost its data (adapter: ``NumberingRecovery``)."""

    async def attempt(self, application_id: int) -> bool:
        """One bounded attempt for the application's hash slot; True when its numbering is open (again), False
        while it recovers from a loss; :class:`~chat_api.model.NumberingStillOpening` when a slot used for the
        first time did not finish opening within the bounded wait."""
        ...


@runtime_checkable
class Applications(Protocol):
    """The application lifecycle (adapter: :class:`chat_common.tenancy.Applications`).

    Synchronous, shared with the operator: the service calls it through :func:`asyncio.to_thread`, never on the
    event loop. ``create`` and ``rename`` validate the name (:class:`chat_api.model.Invalid`).
    """

    def create(
        self, name: object, idempotency_key: str | None = None, fingerprint: str | None = None
    ) -> tuple[Application, bool]:
        """Create one; ``(application, created)`` — False when the key was used before (with this fingerprint;
        another one raises :class:`~chat_common.idempotency.KeyReused`)."""
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

    def set_suspended(self, application_id: int, suspended: bool) -> Application | None:
        """Suspend or resume; the application after, None when it is gone."""
        ...

    def rotate_token(
        self, application_id: int, grace_seconds: int = 86_400, generation: int | None = None
    ) -> tuple[Application | None, bool]:
        """A new token; the former one works ``grace_seconds`` more. ``(application, rotated)``."""
        ...

    def set_limits(self, application_id: int, limits: TenantLimits) -> Application | None:
        """Set the per-tenant limits; None when the application is gone."""
        ...

    def usage(self, application_id: int) -> Usage | None:
        """Chats, messages, last activity and state; None when the application is gone."""
        ...


@runtime_checkable
class TenantDirectoryPort(Protocol):
    """token -> application, cached per process with bounded staleness (adapter: ``TenantDirectory``)."""

    async def lookup(self, token: str, fresh: bool = False) -> Application | None:
        """The application the token names now (current token, or former one in its grace period), or None."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget what is cached for a token."""
        ...


@runtime_checkable
class RateLimiterPort(Protocol):
    """Per-application request counting in one-second windows (adapter: ``RedisRateLimiter``)."""

    async def admit(self, application_id: int, limit: int) -> bool:
        """Count this request; False when it is over ``limit`` in the current second."""
        ...
