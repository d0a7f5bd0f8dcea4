"""Ports: what the service layer needs from the outside world, and nothing more.

A port is a :class:`typing.Protocol` naming exactly the methods the use cases (:mod:`chat_api.use_cases`) and
numbering (:mod:`chat_api.numbering`) call on one collaborator. They are typed against these, never against the
adapters, so the rules can run over anything shaped the same way:

- the real adapters (``chat_api.adapters.*`` and :class:`chat_common.tenancy.applications.Applications`) satisfy them
  structurally, without inheriting from them — ``tests/unit/test_service_ports.py`` checks every adapter against
  its port, method by method, so a signature drifting apart fails a unit test;
- in-memory fakes in ``tests/unit/fakes.py`` satisfy them too, and run the whole service layer (and the Falcon
  app over it) in milliseconds with no MariaDB, Redis or RabbitMQ reachable (``make test-unit``).

The value types that cross a port (:class:`Allocation` and its status codes, :class:`Claim`, :class:`Recorded`,
:class:`Numbered`, :class:`KeyInUse`, :class:`PublishError`, ...) live in :mod:`chat_api.model`, the only module
this one imports: the layer contracts in ``pyproject.toml`` (import-linter) hold that.
Ports say nothing about how connections are opened or closed beyond what the service itself calls; the process
lifecycle (``chat_api.app.Lifecycle``) wires the concrete adapters it builds.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from chat_api.model import (
    Allocation,
    Application,
    Chat,
    Claim,
    EndpointChanges,
    EndpointSpec,
    EventScan,
    Message,
    Numbered,
    Recorded,
    SearchHit,
    TenantLimits,
    Usage,
    WebhookEndpoint,
    WriterHeartbeat,
)

__all__ = [
    "Applications",
    "CounterSource",
    "EventLogPort",
    "IdempotencyPort",
    "NumberingPort",
    "NumbersPort",
    "Publisher",
    "QueueCounter",
    "RateLimiterPort",
    "RecoveryPort",
    "RecoveryState",
    "Repository",
    "SearchBudgetPort",
    "SearchReader",
    "SlotMarkers",
    "SlotOpenings",
    "StoredKeysPort",
    "TenantDirectoryPort",
    "WebhookEndpointsPort",
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
class EventLogPort(Protocol):
    """Reads of an application's event log (adapter: ``SqlEventLog``; the writers fill it)."""

    async def scan(self, application_id: int, after: int, limit: int, from_replica: bool = False) -> EventScan:
        """The application's events after id ``after`` (at most ``limit``), with the log's head and oldest id, all
        from one snapshot."""
        ...


@runtime_checkable
class NumberingPort(Protocol):
    """Atomic numbering and edit versions (adapter: ``Numbering``, Redis + Lua).

    Every call answers an :class:`Allocation` whose ``status`` is an :class:`~chat_api.model.AllocationStatus`
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
class NumbersPort(Protocol):
    """What the service asks numbering for: a number for a create, a version for an edit (:mod:`chat_api.numbering`).

    Each answer is a :class:`Numbered` whose ``published_at`` the publish of the create or edit must carry.
    """

    async def for_chat(self, application: Application, name: str, key: str | None) -> Numbered:
        """The number of a new chat; with an idempotency ``key``, a repeat gets the first one (``replayed``)."""
        ...

    async def for_message(self, application: Application, chat_number: int, body: str, key: str | None) -> Numbered:
        """The number of a new message of the chat; a repeated ``key`` as :meth:`for_chat`."""
        ...

    async def for_chat_edit(self, application: Application, chat_number: int) -> Numbered:
        """A fresh version for a rename of the chat."""
        ...

    async def for_message_edit(self, application: Application, chat_number: int, message_number: int) -> Numbered:
        """A fresh version for an edit of the message."""
        ...

    async def last_edit(self, application_id: int) -> float | None:
        """Unix time of the application's last edit (rename or message edit); None if it never edited."""
        ...


@runtime_checkable
class CounterSource(Protocol):
    """The highest numbers written to MySQL, that counters are loaded from (adapter: ``SqlRepository``)."""

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written for the application (0 if none)."""
        ...

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none)."""
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

    async def publish(self, queue: str, body: bytes, published_at: float | None = None) -> None:
        """Return once the broker confirmed; raise ``PublishError`` otherwise.

        ``published_at``: when the number the message carries was handed out (:attr:`Numbered.published_at`; None:
        now); the message carries it, and the confirm must come within the publish timeout of it."""
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
class SlotOpenings(Protocol):
    """The Redis side of opening slots (adapter: ``chat_api.adapters.recovery.RedisSlotOpenings``; fake in
    ``tests/unit/fakes.py``).

    An *opening* is ``<incarnation>|<epoch>``: created (epoch part empty) when a slot without an epoch is first
    looked at, *promoted* (epoch part set) by whoever finds that the slot never held numbers, removed in the same
    atomic step that writes the epoch. It lives in the slot's shard, so it is lost exactly when the epoch is.
    """

    async def begin(self, slot: int, incarnation: str) -> str | None:
        """None when the slot has its epoch; else its opening, created with ``incarnation`` if there was none."""
        ...

    async def promote(self, slot: int, incarnation: str, epoch: str) -> str | None:
        """The opening of ``incarnation``, its epoch part set to ``epoch`` if it was empty and ``epoch`` is not;
        None when that incarnation ended (completed, or lost with the shard's data)."""
        ...

    async def complete(self, slot: int, opening: str) -> int:
        """Write the promoted ``opening``'s epoch (unless one is there) and end it, if it is still the current
        opening: 2 (this call wrote the epoch), 1 (the slot has an epoch), 0 (neither: look again)."""
        ...

    async def legacy_epoch(self) -> str | None:
        """The single epoch of the version before per-slot epochs, if Redis still holds it."""
        ...


@runtime_checkable
class SlotMarkers(Protocol):
    """The durable per-slot facts in MySQL (adapter: ``chat_api.adapters.recovery.NumberingMarker``)."""

    async def slot_state(self, slot: int) -> str:
        """OPENED (the slot held numbers: a missing epoch is a loss), NEW (it never did) or LEGACY (the system
        predates per-slot markers and opened before: any slot may have held numbers):
        :mod:`chat_api.numbering.opening`."""
        ...

    async def open_slot(self, slot: int, state: str) -> None:
        """Record durably that ``slot`` opens (idempotent)."""
        ...

    async def opened_slots(self) -> set[int]:
        """Every slot that ever opened."""
        ...


@runtime_checkable
class RecoveryState(Protocol):
    """What numbering recovery reads and writes in Redis (adapter: ``chat_api.adapters.recovery.RedisRecoveryState``):
    slot epochs, when each slot's recovery started, per-slot locks, the writers' heartbeats, the deferral ledger."""

    async def has_epoch(self, slot: int) -> bool:
        """True when the slot's numbering is open."""
        ...

    async def epochs_present(self, slots: list[int]) -> list[bool]:
        """For each slot, whether it has its epoch (one round trip)."""
        ...

    async def open_epoch(self, slot: int, epoch: str) -> bool:
        """Write the slot's epoch unless one is there; True when this call wrote it."""
        ...

    async def note_recovery_start(self, slot: int, now: float) -> float:
        """When the slot's recovery started: ``now`` unless an earlier start is recorded (then that one)."""
        ...

    async def forget_recovery_start(self, slot: int) -> None:
        """The slot re-opened: its recovery clock goes."""
        ...

    async def lock(self, slot: int, milliseconds: int) -> bool:
        """Take the slot's recovery lock for ``milliseconds`` (one process at a time recovers a slot)."""
        ...

    async def unlock(self, slot: int) -> None:
        """Give the lock back (it expires by itself too)."""
        ...

    async def heartbeats(self) -> dict[str, WriterHeartbeat]:
        """Every writer's latest heartbeat, by ``<queue>|<writer>``."""
        ...

    async def deferred_since(self) -> bytes | str | None:
        """Since when the deferral ledger is complete (compared as is between reads); None: it was lost."""
        ...

    async def lowest_deferred(self) -> float | None:
        """The lowest stamp in the deferral ledger; None when it is empty."""
        ...


@runtime_checkable
class QueueCounter(Protocol):
    """The broker's queue counts (adapter: ``chat_api.adapters.recovery.BrokerQueueCounts``). Blocking: called in a
    worker thread. Raises :class:`OSError` (a ``ConnectionError``) when the broker cannot be reached."""

    def count(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """(ready messages, consumers) of each queue; a missing queue counts as (0, 0)."""
        ...


@runtime_checkable
class Applications(Protocol):
    """The application lifecycle (adapter: :class:`chat_common.tenancy.applications.Applications`).

    Synchronous, shared with the operator: the service calls it through :func:`asyncio.to_thread`, never on the
    event loop. ``create`` and ``rename`` validate the name (:class:`chat_api.model.Invalid`).
    """

    def create(
        self, name: object, idempotency_key: str | None = None, fingerprint: str | None = None
    ) -> tuple[Application, bool]:
        """Create one; ``(application, created)`` — False when the key was used before (with this fingerprint;
        another one raises :class:`~chat_common.wire.idempotency.KeyReused`)."""
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

    def set_cors_origins(self, application_id: int, origins: tuple[str, ...] | None) -> Application | None:
        """Set the origins CORS allows on its stream and ticket routes (None: the deployment's); None when gone."""
        ...

    def usage(self, application_id: int) -> Usage | None:
        """Chats, messages, last activity and state; None when the application is gone."""
        ...


@runtime_checkable
class WebhookEndpointsPort(Protocol):
    """A tenant's webhook endpoints (adapter: :class:`chat_common.tenancy.webhooks.WebhookEndpoints`).

    Synchronous, shared with the operator: called through :func:`asyncio.to_thread`. Raises the tenancy layer's
    errors (``EndpointNotFound``, ``EndpointConflict``, ``SealingUnavailable``, ``CursorExpired``, ``Invalid``),
    which :mod:`chat_api.use_cases.webhooks` turns into the API's. ``managed_by``: who asks (``api``); an endpoint
    another manager owns is a conflict (None: any).
    """

    def list(self, application_id: int) -> list[WebhookEndpoint]:
        """The application's endpoints, in creation order."""
        ...

    def get(self, application_id: int, name: str) -> WebhookEndpoint | None:
        """One endpoint by name, or None."""
        ...

    def create(self, application_id: int, spec: EndpointSpec, managed_by: str = "api") -> WebhookEndpoint:
        """Register one at the event log's head; the answer carries its secret."""
        ...

    def update(
        self, application_id: int, name: str, changes: EndpointChanges, managed_by: str | None = "api"
    ) -> WebhookEndpoint:
        """Change URL, event types or ``enabled`` (enabling a disabled one makes it healthy)."""
        ...

    def delete(self, application_id: int, name: str, managed_by: str | None = "api") -> None:
        """Delete one."""
        ...

    def rotate_secret(
        self,
        application_id: int,
        name: str,
        secret: str | None = None,
        grace_seconds: int = 86_400,
        managed_by: str | None = "api",
    ) -> WebhookEndpoint:
        """A new signing secret; the current one signs ``grace_seconds`` more. The answer carries the new one."""
        ...

    def replay(self, application_id: int, name: str, from_cursor: object) -> WebhookEndpoint:
        """Deliver again from after ``from_cursor``: position, held deliveries dropped, healthy again."""
        ...


@runtime_checkable
class TenantDirectoryPort(Protocol):
    """token -> application, cached per process with bounded staleness (adapter: ``TenantDirectory``)."""

    async def lookup(self, token: str, fresh: bool = False) -> Application | None:
        """The application the token names now (current token, or former one in its grace period), or None."""
        ...

    async def lookup_digest(self, digest: str) -> Application | None:
        """The same by the token's digest (a stream ticket carries the digest, never the token), cached alike."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget what is cached for a token."""
        ...


@runtime_checkable
class SearchBudgetPort(Protocol):
    """Each application's share of search time (adapter: ``RedisSearchBudget``)."""

    async def wait_seconds(self, application_id: int) -> float:
        """0 when the application may search now, else how long until it may."""
        ...

    async def spend(self, application_id: int, seconds: float) -> None:
        """Charge a search that took ``seconds``."""
        ...


@runtime_checkable
class RateLimiterPort(Protocol):
    """Per-application request counting in one-second windows (adapter: ``RedisRateLimiter``)."""

    async def admit(self, application_id: int, limit: int) -> bool:
        """Count this request; False when it is over ``limit`` in the current second."""
        ...


class SearchReader(Protocol):
    """Fragment search in one chat's messages, best matches first (adapters: ``chat_api.adapters.search``)."""

    name: str

    async def search(
        self, application_id: int, chat_number: int, query: str, offset: int, limit: int, from_replica: bool = False
    ) -> list[SearchHit]:
        """Best matches first; :class:`SearchUnavailable` when the backend cannot answer. ``from_replica``: the
        caller allows a read replica's answer (a backend without one ignores it)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
