"""In-memory fakes of the API's ports (:mod:`chat_api.ports`): the service layer's rules run on them in milliseconds.

Each fake keeps the contract of the adapter it stands for, not a convenient simplification of it:

- :class:`FakeNumbering` follows the Lua script of ``chat_api.adapters.numbering`` step by step (epoch, then the
  application hash, then the chat's counter), answers the same status codes, and writes epochs in the real
  ``<id>:fresh|recovered:<unix>`` format; loads are refused when the epoch changed;
- :class:`FakeIdempotency` claims (``pending``), records and releases like the Redis script, reading the
  numbering epoch in the same step, and raises :class:`KeyInUse` for a pending claim;
- :class:`FakeRepository` raises :class:`NotFound` naming what is missing, as ``SqlRepository`` does, and applies
  the writers' versioned upserts (:meth:`FakeRepository.apply`) so a test can play the writer;
- :class:`FakePublisher` records what it published and can be told to fail the next N publishes;
- :class:`FakeSlotOpenings` follows the Redis scripts that open a slot for its first use, and
  :class:`FakeSlotMarkers` the MySQL markers with their per-process cache; a :class:`Gate` holds a call midway, so
  a test can interleave API processes at the exact step it wants.

Failures are injected with :meth:`Faults.fail` (the next call of a method raises the given exception), never by
patching libraries. :func:`build` wires one :class:`World` of fakes into a real :class:`ChatService`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import orjson

from chat_api.adapters import numbering as codes
from chat_api.adapters.idempotency import PENDING, Claim, KeyInUse, Recorded
from chat_api.adapters.numbering import Allocation
from chat_api.adapters.publisher import PublishError
from chat_api.adapters.recovery import NUMBERING_OPENED, SLOTS_MARKER, slot_marker
from chat_api.model import Application, Chat, EventScan, Message, NotFound, WriterHeartbeat
from chat_api.numbering import Numberer
from chat_api.numbering.epochs import FRESH, RECOVERED, new_epoch
from chat_api.numbering.opening import LEGACY, NEW, OPENED
from chat_api.services import ChatService, Limits
from chat_api.use_cases.tickets import TicketSigner
from chat_common.search import SearchHit, SearchUnavailable
from chat_common.tenancy import webhooks as webhook_rules
from chat_common.tenancy.applications import TenantLimits, Usage, check_grace_seconds, new_token
from chat_common.tenancy.webhooks import EndpointChanges, EndpointSpec, WebhookEndpoint
from chat_common.validation import Invalid, clean_name
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.idempotency import KeyReused, check_idempotency_key
from chat_common.wire.topology import Topology


class Faults:
    """Injected failures: ``fail("method", exc, times=n)`` makes the next ``n`` calls of that method raise ``exc``."""

    def __init__(self) -> None:
        self._faults: dict[str, list[BaseException]] = defaultdict(list)
        self.calls: list[tuple] = []

    def fail(self, method: str, exc: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``exc``."""
        self._faults[method].extend([exc] * times)

    def _enter(self, method: str, *args: object) -> None:
        """Record the call; raise its injected failure, if any."""
        self.calls.append((method, *args))
        if self._faults[method]:
            raise self._faults[method].pop(0)

    def called(self, method: str) -> list[tuple]:
        """The arguments of every call of ``method`` so far."""
        return [call[1:] for call in self.calls if call[0] == method]


# -- applications (the synchronous tenancy layer) -------------------------------------------------------------
class FakeApplications(Faults):
    """``chat_common.tenancy.applications.Applications`` over a dict: tokens, names, idempotency keys; names
    validated."""

    def __init__(self, max_name_chars: int = 255) -> None:
        super().__init__()
        self.max_name_chars = max_name_chars
        self.rows: dict[str, Application] = {}
        self.by_key: dict[str, tuple[str, str | None]] = {}  # stored key -> (token, request fingerprint)
        self.cleanups: list = []  # called with the id of a deleted application (the numbering forgets it)
        self.usage_of: dict[int, tuple[int, float | None]] = {}  # id -> (messages, last activity), for usage()
        self.owners: dict[int, str] = {}  # id -> uid of the Application resource managing it
        self._ids = itertools.count(1)

    def create(
        self, name: object, idempotency_key: str | None = None, fingerprint: str | None = None
    ) -> tuple[Application, bool]:
        """Create one; a key used before answers that application with ``created`` False (KeyReused: another
        fingerprint)."""
        self._enter("create", name, idempotency_key)
        name = clean_name(name, self.max_name_chars)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            if idempotency_key in self.by_key:
                token, first = self.by_key[idempotency_key]
                if first != fingerprint:
                    raise KeyReused("this Idempotency-Key was used for a different request")
                return self.rows[token], False
        application = Application(new_token(), name, 0, next(self._ids))
        self.rows[application.token] = application
        if idempotency_key is not None:
            self.by_key[idempotency_key] = (application.token, fingerprint)
        return application, True

    def find(self, token: str) -> Application | None:
        """The application with this token (or with it as its former token, in its grace period), or None."""
        self._enter("find", token)
        return self._find(token)

    def _find(self, token: str) -> Application | None:
        if token in self.rows:
            return self.rows[token]
        now = time.time()
        return next((a for a in self.rows.values() if a.previous_token == token and a.previous_token_valid(now)), None)

    def _find_digest(self, digest: str) -> Application | None:
        now = time.time()
        for application in self.rows.values():
            if application.current_digest() == digest:
                return application
            if application.previous_digest() == digest and application.previous_token_valid(now):
                return application
        return None

    def _by_id(self, application_id: int) -> Application | None:
        return next((a for a in self.rows.values() if a.id == application_id), None)

    def _replace(self, application: Application, **changes: object) -> Application:
        updated = dataclasses.replace(application, **changes)
        del self.rows[application.token]
        self.rows[updated.token] = updated
        return updated

    def find_by_idempotency_key(self, key: str) -> Application | None:
        """The application created with this stored key, or None."""
        self._enter("find_by_idempotency_key", key)
        token = self.by_key.get(key, (None,))[0]
        return next((a for a in self.rows.values() if a.id == self.rows[token].id), None) if token else None

    def find_by_owner(self, owner_uid: str) -> Application | None:
        """The application the resource ``owner_uid`` manages, or None."""
        self._enter("find_by_owner", owner_uid)
        ids = sorted(i for i, uid in self.owners.items() if uid == owner_uid)
        return self._by_id(ids[0]) if ids else None

    def set_owner(self, application_id: int, owner_uid: str) -> None:
        """Record the managing resource, whoever managed it before."""
        self._enter("set_owner", application_id, owner_uid)
        self.owners[application_id] = owner_uid

    def claim_owner(self, application_id: int, owner_uid: str) -> bool:
        """Become the owner unless another resource is; True when ``owner_uid`` owns it afterwards."""
        self._enter("claim_owner", application_id, owner_uid)
        if self._by_id(application_id) is None or self.owners.get(application_id, owner_uid) != owner_uid:
            return False
        self.owners[application_id] = owner_uid
        return True

    def release_owner(self, owner_uid: str) -> int:
        """Forget the resource's ownerships; how many there were."""
        self._enter("release_owner", owner_uid)
        released = [i for i, uid in self.owners.items() if uid == owner_uid]
        for i in released:
            del self.owners[i]
        return len(released)

    def list(self, offset: int, limit: int) -> list[Application]:
        """Applications in creation order."""
        self._enter("list", offset, limit)
        return sorted(self.rows.values(), key=lambda a: a.id)[offset : offset + limit]

    def rename(self, token: str, name: object) -> Application | None:
        """Set the name (validated first); None when the token is unknown."""
        self._enter("rename", token, name)
        name = clean_name(name, self.max_name_chars)
        found = self._find(token)
        return None if found is None else self._replace(found, name=name)

    def rename_application(self, application: Application, name: object) -> Application | None:
        """Set the name of an application found before; None when it is gone since."""
        self._enter("rename_application", application.id, name)
        name = clean_name(name, self.max_name_chars)
        found = self._by_id(application.id)
        return None if found is None else self._replace(found, name=name)

    def delete_application(self, application: Application, batch_size: int = 5000) -> int:
        """Forget an application found before (as :meth:`delete`); 0 messages deleted."""
        found = self._by_id(application.id)
        return 0 if found is None else self.delete(found.token, batch_size) or 0

    def delete(self, token: str, batch_size: int = 5000) -> int | None:
        """Forget the application; 0 messages deleted (rows live in the repository), None when unknown."""
        self._enter("delete", token)
        found = self._find(token)
        if found is None:
            return None
        del self.rows[found.token]
        for cleanup in self.cleanups:
            cleanup(found.id)
        return 0

    def set_suspended(self, application_id: int, suspended: bool) -> Application | None:
        """Suspend or resume; None when the application is gone."""
        self._enter("set_suspended", application_id, suspended)
        found = self._by_id(application_id)
        return None if found is None else self._replace(found, suspended=bool(suspended))

    def rotate_token(
        self, application_id: int, grace_seconds: int = 86_400, generation: int | None = None
    ) -> tuple[Application | None, bool]:
        """A new token; the former one valid ``grace_seconds`` more; with ``generation``, only while below it."""
        self._enter("rotate_token", application_id, grace_seconds, generation)
        found = self._by_id(application_id)
        if found is None:
            return None, False
        if generation is not None and found.token_generation >= generation:
            return found, False
        now = time.time()
        rotated = self._replace(
            found,
            token=new_token(),
            previous_token=found.token,
            previous_token_expires_at=now + grace_seconds,
            token_rotated_at=now,
            token_generation=found.token_generation + 1 if generation is None else generation,
        )
        return rotated, True

    def set_limits(self, application_id: int, limits: TenantLimits) -> Application | None:
        """Set the limits; None when the application is gone."""
        self._enter("set_limits", application_id, limits)
        found = self._by_id(application_id)
        return None if found is None else self._replace(found, limits=limits)

    def set_cors_origins(self, application_id: int, origins: tuple[str, ...] | None) -> Application | None:
        """Set the CORS origins; None when the application is gone."""
        self._enter("set_cors_origins", application_id, origins)
        found = self._by_id(application_id)
        return None if found is None else self._replace(found, cors_origins=origins)

    def usage(self, application_id: int) -> Usage | None:
        """Usage from :attr:`usage_of` (what the count sync and numbering would report)."""
        self._enter("usage", application_id)
        found = self._by_id(application_id)
        if found is None:
            return None
        messages, last = self.usage_of.get(application_id, (0, None))
        return Usage(found.chats_count, messages, last, found.suspended)

    def close(self) -> None:
        """Nothing to release."""


# -- numbering (Redis + Lua) ----------------------------------------------------------------------------------
@dataclass
class _Counters:
    """One application's hash: ``id``, ``chats`` and ``m:<chat>`` per loaded chat."""

    id: int
    chats: int | None = None
    messages: dict[int, int] = field(default_factory=dict)
    edited: int = 0  # the version handed to the last edit (the edit clock, field ``v``)


class FakeNumbering(Faults):
    """The numbering script's rules over a dict; ``epoch`` None means Redis lost it (numbering closed)."""

    def __init__(self, epoch: str | None = None) -> None:
        super().__init__()
        self.epoch = epoch if epoch is not None else new_epoch(FRESH, time.time())
        self.hashes: dict[int, _Counters] = {}
        self.clock = 0

    # test controls
    def lose_data(self) -> None:
        """What a Redis restart without persistence does: the epoch and every counter are gone."""
        self.epoch = None
        self.hashes.clear()

    def open(self, kind: str = RECOVERED, at: float | None = None) -> str:
        """Write a new epoch, as the recovery does when it re-opens numbering."""
        self.epoch = new_epoch(kind, time.time() if at is None else at)
        return self.epoch

    def forget(self, application_id: int) -> None:
        """Drop an application's counters (as deleting an application does)."""
        self.hashes.pop(application_id, None)

    # the port
    def _script(self, op: str, application_id: int, chat: int = 0, message: int = 0, limit: int = 0) -> Allocation:
        self._enter(op, application_id, chat, message)
        if self.epoch is None:
            return Allocation(codes.RECOVERING, "")
        counters = self.hashes.get(application_id)
        if counters is None or counters.chats is None:
            return Allocation(codes.APPLICATION_NOT_LOADED, self.epoch)
        if op == "new_chat":
            if limit and counters.chats >= limit:
                return Allocation(codes.LIMIT_REACHED, self.epoch, counters.id)
            counters.chats += 1
            counters.messages[counters.chats] = 0
            return Allocation(codes.OK, self.epoch, counters.id, counters.chats)
        if chat > counters.chats:
            return Allocation(codes.NOT_FOUND, self.epoch)
        last = counters.messages.get(chat)
        if last is None:
            return Allocation(codes.CHAT_NOT_LOADED, self.epoch, counters.id)
        if op == "new_message":
            counters.messages[chat] = last + 1
            return Allocation(codes.OK, self.epoch, counters.id, last + 1)
        if op == "edit_message" and message > last:
            return Allocation(codes.NOT_FOUND, self.epoch)
        self.clock = max(self.clock + 1, time.time_ns() // 1000)
        counters.edited = self.clock
        return Allocation(codes.OK, self.epoch, counters.id, self.clock)

    async def new_chat(self, application_id: int, max_chats: int = 0) -> Allocation:
        """Allocate the application's next chat number (LIMIT_REACHED at ``max_chats``, no number taken)."""
        return self._script("new_chat", application_id, limit=max_chats)

    async def new_message(self, application_id: int, chat_number: int) -> Allocation:
        """Allocate the chat's next message number."""
        return self._script("new_message", application_id, chat_number)

    async def edit_chat(self, application_id: int, chat_number: int) -> Allocation:
        """Check the chat exists and stamp a rename with a fresh version."""
        return self._script("edit_chat", application_id, chat_number)

    async def edit_message(self, application_id: int, chat_number: int, message_number: int) -> Allocation:
        """Check the message exists and stamp an edit with a fresh version."""
        return self._script("edit_message", application_id, chat_number, message_number)

    async def load_application(
        self, application_id: int, epoch: str, last_chat_number: int, legacy_token: str = ""
    ) -> bool:
        """HSETNX ``id`` and ``chats``; refused when the epoch changed."""
        self._enter("load_application", application_id, epoch, last_chat_number)
        if self.epoch != epoch:
            return False
        counters = self.hashes.setdefault(application_id, _Counters(application_id))
        if counters.chats is None:
            counters.chats = last_chat_number
        return True

    async def load_chat(
        self, application_id: int, epoch: str, chat_number: int, last_message_number: int, legacy_token: str = ""
    ) -> bool:
        """HSETNX ``m:<chat>``; refused when the epoch changed."""
        self._enter("load_chat", application_id, epoch, chat_number, last_message_number)
        if self.epoch != epoch:
            return False
        self.hashes[application_id].messages.setdefault(chat_number, last_message_number)
        return True

    async def last_edit(self, application_id: int) -> float | None:
        """Unix time of the application's last edit; None if it never edited."""
        self._enter("last_edit", application_id)
        counters = self.hashes.get(application_id)
        return counters.edited / 1e6 if counters and counters.edited else None

    async def ping(self) -> bool:
        """True (unless a failure is injected)."""
        self._enter("ping")
        return True


class FakeRecovery(Faults):
    """Re-opens numbering (a ``recovered`` epoch) on the ``opens_after``-th attempt; None: never."""

    def __init__(self, numbering: FakeNumbering, opens_after: int | None = 1) -> None:
        super().__init__()
        self.numbering = numbering
        self.opens_after = opens_after
        self.attempts = 0

    async def attempt(self, application_id: int) -> bool:
        """One attempt (one numbering store, so every application's slot alike); True when numbering is open."""
        self._enter("attempt", application_id)
        if self.numbering.epoch is not None:
            return True
        self.attempts += 1
        if self.opens_after is not None and self.attempts >= self.opens_after:
            self.numbering.open(RECOVERED)
            return True
        return False


# -- opening a slot for its first use (Redis scripts + MySQL markers) ------------------------------------------
class Gate:
    """Holds a fake's call at a chosen point: ``reached`` is set when a call gets there, ``release`` lets it go."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self._open = asyncio.Event()

    def release(self) -> None:
        """Let every held call (and every later one) through."""
        self._open.set()

    async def hold(self) -> None:
        """Where a fake's call waits."""
        self.reached.set()
        await self._open.wait()


class FakeSlotOpenings(Faults):
    """The slot epochs and openings in Redis, following the three scripts of ``chat_api.adapters.recovery`` step by
    step (each call is atomic, as a script is); :meth:`lose_data` is a shard coming back empty."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: dict[int, str] = {}
        self.openings: dict[int, str] = {}
        self.legacy: str | None = None  # the single epoch of the version before per-slot epochs
        self.written: list[tuple[int, str]] = []  # every epoch a completion wrote

    def lose_data(self) -> None:
        """Everything in the shard is gone: epochs, openings, the legacy epoch."""
        self.epochs.clear()
        self.openings.clear()
        self.legacy = None

    async def begin(self, slot: int, incarnation: str) -> str | None:
        """None with an epoch (any opening removed); else the opening, created if missing."""
        await asyncio.sleep(0)  # a round trip: other requests run meanwhile
        self._enter("begin", slot)
        if slot in self.epochs:
            self.openings.pop(slot, None)
            return None
        return self.openings.setdefault(slot, f"{incarnation}|")

    async def promote(self, slot: int, incarnation: str, epoch: str) -> str | None:
        """The opening of ``incarnation`` (its epoch part set if empty and given); None once that one ended."""
        await asyncio.sleep(0)
        self._enter("promote", slot, epoch)
        opening = self.openings.get(slot)
        if opening is None or opening.partition("|")[0] != incarnation:
            return None
        if opening.endswith("|") and epoch:
            opening = self.openings[slot] = f"{incarnation}|{epoch}"
        return opening

    async def complete(self, slot: int, opening: str) -> int:
        """2: the epoch written now, 1: there already, 0: the opening is not current and no epoch."""
        await asyncio.sleep(0)
        self._enter("complete", slot)
        if self.openings.get(slot) == opening:
            del self.openings[slot]
            if slot in self.epochs:
                return 1
            self.epochs[slot] = opening.partition("|")[2]
            self.written.append((slot, self.epochs[slot]))
            return 2
        return int(slot in self.epochs)

    async def legacy_epoch(self) -> str | None:
        """The previous version's single epoch, if still there."""
        await asyncio.sleep(0)
        self._enter("legacy_epoch")
        return self.legacy


class FakeSlotMarkers(Faults):
    """One API process's view of the ``system_markers`` table (shared by the processes of a test: ``table``), with
    the per-process cache of slots known to be marked, as ``NumberingMarker`` keeps it. ``gates`` hold a call of
    that name after its work (``slot_state`` after its read, ``open_slot`` after its writes)."""

    def __init__(self, table: set[str]) -> None:
        super().__init__()
        self.table = table
        self.cached: set[int] = set()
        self.gates: dict[str, Gate] = {}

    async def _gate(self, method: str) -> None:
        gate = self.gates.get(method)
        if gate is not None:
            await gate.hold()

    async def slot_state(self, slot: int) -> str:
        """OPENED, NEW or LEGACY, as ``NumberingMarker.slot_state`` reads them."""
        await asyncio.sleep(0)
        self._enter("slot_state", slot)
        if slot in self.cached:
            state = OPENED
        elif slot_marker(slot) in self.table:
            self.cached.add(slot)
            state = OPENED
        else:
            state = LEGACY if NUMBERING_OPENED in self.table and SLOTS_MARKER not in self.table else NEW
        await self._gate("slot_state")
        return state

    async def open_slot(self, slot: int, state: str) -> None:
        """Write the slot's marker (and on a new system the system's two), as ``NumberingMarker.open_slot``."""
        await asyncio.sleep(0)
        self._enter("open_slot", slot, state)
        if state == NEW:
            self.table.update({SLOTS_MARKER, NUMBERING_OPENED})
        self.table.add(slot_marker(slot))
        self.cached.add(slot)
        await self._gate("open_slot")

    async def opened_slots(self) -> set[int]:
        """Every slot whose marker is in the table."""
        await asyncio.sleep(0)
        prefix = slot_marker(0)[:-1]
        return {int(name[len(prefix) :]) for name in self.table if name.startswith(prefix) and name != prefix}


class FakeRecoveryState(Faults):
    """Numbering recovery's Redis (``RedisRecoveryState``): the slot epochs are the ones of ``openings`` (one shard)."""

    def __init__(self, openings: FakeSlotOpenings) -> None:
        super().__init__()
        self.openings = openings
        self.started: dict[int, float] = {}
        self.locks: set[int] = set()
        self.beats: dict[str, WriterHeartbeat] = {}  # <queue>|<writer> -> its latest heartbeat
        self.since: str | None = None  # deferred_since; None: the ledger was lost
        self.lowest: float | None = None

    async def has_epoch(self, slot: int) -> bool:
        """Whether the slot has its epoch."""
        return slot in self.openings.epochs

    async def epochs_present(self, slots: list[int]) -> list[bool]:
        """Whether each slot has its epoch."""
        return [slot in self.openings.epochs for slot in slots]

    async def open_epoch(self, slot: int, epoch: str) -> bool:
        """SET NX of the slot's epoch."""
        self._enter("open_epoch", slot, epoch)
        if slot in self.openings.epochs:
            return False
        self.openings.epochs[slot] = epoch
        return True

    async def note_recovery_start(self, slot: int, now: float) -> float:
        """The recorded start (``now`` unless one is there)."""
        return self.started.setdefault(slot, now)

    async def forget_recovery_start(self, slot: int) -> None:
        """Drop the slot's recovery clock."""
        self.started.pop(slot, None)

    async def lock(self, slot: int, milliseconds: int) -> bool:
        """Take the slot's lock (never expires here)."""
        if slot in self.locks:
            return False
        self.locks.add(slot)
        return True

    async def unlock(self, slot: int) -> None:
        """Give the lock back."""
        self.locks.discard(slot)

    async def heartbeats(self) -> dict[str, WriterHeartbeat]:
        """The writers' heartbeats, as set by the test."""
        return dict(self.beats)

    async def deferred_since(self) -> bytes | str | None:
        """Since when the ledger is complete."""
        return self.since

    async def lowest_deferred(self) -> float | None:
        """The ledger's lowest stamp."""
        return self.lowest


class FakeQueueCounter(Faults):
    """The broker's queue counts: ``ready`` per queue (0 otherwise), no consumers; ``fail`` ConnectionError."""

    def __init__(self) -> None:
        super().__init__()
        self.ready: dict[str, int] = {}

    def count(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """(ready, consumers) of each queue."""
        self._enter("count", names)
        return {name: (self.ready.get(name, 0), 0) for name in names}


# -- publisher (RabbitMQ with confirms) -----------------------------------------------------------------------
class FakePublisher(Faults):
    """Records every confirmed publish as ``(queue, decoded body)``; :meth:`fail_next` makes publishes fail."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, dict]] = []
        self.stamps: list[float | None] = []  # the published_at of each message in ``published``
        self.started = self.closed = False

    def fail_next(self, times: int = 1, reason: str = "message broker unavailable") -> None:
        """The next ``times`` publishes raise :class:`PublishError` (nothing confirmed)."""
        self.fail("publish", PublishError(reason), times)

    @property
    def is_ready(self) -> bool:
        """Ready while started and not closed."""
        return self.started and not self.closed

    async def start(self) -> None:
        """Mark started."""
        self.started = True

    async def publish(self, queue: str, body: bytes, published_at: float | None = None) -> None:
        """Confirm at once (or raise an injected failure); keeps the stamp each message carries."""
        self._enter("publish", queue, body)
        self.published.append((queue, orjson.loads(body)))
        self.stamps.append(published_at)

    async def close(self) -> None:
        """Mark closed."""
        self.closed = True


# -- idempotency keys (Redis) and the keys stored beside the rows (MySQL) ------------------------------------
class FakeIdempotency(Faults):
    """Claims and records in a dict; a claim reads the numbering epoch in the same step, as the script does."""

    def __init__(self, numbering: FakeNumbering, claim_seconds: int = 7) -> None:
        super().__init__()
        self.numbering = numbering
        self.claim_seconds = claim_seconds
        self.values: dict[tuple[int, str, str], str | Recorded] = {}

    async def claim(self, application_id: int, scope: str, key: str) -> Claim:
        """Claim the key (``pending``) or answer the record; :class:`KeyInUse` while another request holds it."""
        self._enter("claim", application_id, scope, key)
        epoch = self.numbering.epoch or ""
        value = self.values.get((application_id, scope, key))
        if value is None:
            self.values[(application_id, scope, key)] = PENDING
            return Claim(None, epoch)
        if value == PENDING:
            raise KeyInUse(key, retry_after=self.claim_seconds)
        return Claim(value, epoch)

    async def record(self, application_id: int, scope: str, key: str, outcome: Recorded) -> None:
        """Remember the outcome."""
        self._enter("record", application_id, scope, key, outcome)
        self.values[(application_id, scope, key)] = outcome

    async def release(self, application_id: int, scope: str, key: str) -> None:
        """Free the key."""
        self._enter("release", application_id, scope, key)
        self.values.pop((application_id, scope, key), None)


class FakeStoredKeys(Faults):
    """The ``idempotency_keys`` table: ``(application id, chat number, key) -> Recorded``; every lookup is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[int, int, str], Recorded] = {}

    async def find(self, application_id: int, chat_number: int, key: str) -> Recorded | None:
        """What the writers stored for this key, if anything."""
        self._enter("find", application_id, chat_number, key)
        return self.rows.get((application_id, chat_number, key))


# -- MySQL reads and edits ------------------------------------------------------------------------------------
@dataclass
class _Row:
    text: str
    version: int
    count: int = 0


class FakeRepository(Faults):
    """Chats and messages in dicts keyed by application id, read by application id as the adapter reads them."""

    def __init__(self, applications: FakeApplications) -> None:
        super().__init__()
        self.applications = applications
        self.chats: dict[tuple[int, int], _Row] = {}
        self.messages: dict[tuple[int, int, int], _Row] = {}
        self.replica_bound: float | None = None  # a replica that may serve, this far behind (None: none)
        self.replica_asked: list[bool] = []  # from_replica of each page read, in order

    # the writers' side, for tests
    def add_chat(self, application_id: int, number: int, name: str, messages_count: int = 0) -> None:
        """A chat row as the chat-writer writes it."""
        self.chats[(application_id, number)] = _Row(name, 0, messages_count)

    def add_message(self, application_id: int, chat_number: int, number: int, body: str) -> None:
        """A message row as the message-writer writes it."""
        self.messages[(application_id, chat_number, number)] = _Row(body, 0)

    def apply(self, queue: str, payload: dict) -> None:
        """What a writer does with one published upsert: insert, or update when the version is newer."""
        application_id, chat = payload["application_id"], payload["chat_number"]
        if queue.endswith(".chats"):
            key, rows, text = (application_id, chat), self.chats, payload["name"]
        else:
            key, rows, text = (application_id, chat, payload["message_number"]), self.messages, payload["body"]
            if (application_id, chat) not in self.chats:
                return  # the writer retries it later
        row = rows.get(key)
        if row is None:
            rows[key] = _Row(text, payload["version"])
        elif payload["version"] > row.version:
            row.text, row.version = text, payload["version"]

    def _missing(self, application_id: int, chat_number: int = 0) -> NotFound | None:
        if all(application.id != application_id for application in self.applications.rows.values()):
            return NotFound("application not found")
        if chat_number and (application_id, chat_number) not in self.chats:
            return NotFound("chat not found")
        return None

    # the port
    def replica_lag_bound(self) -> float | None:
        """The test's :attr:`replica_bound` (None: no replica may serve)."""
        return self.replica_bound

    async def find_chat(self, application_id: int, number: int) -> Chat:
        """One chat; NotFound naming the application or the chat."""
        self._enter("find_chat", application_id, number)
        if missing := self._missing(application_id, number):
            raise missing
        row = self.chats[(application_id, number)]
        return Chat(number, row.text, row.count)

    async def list_chats(
        self, application_id: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Chat]:
        """Chats numbered above ``after`` in number order, skipping ``offset``, at most ``limit``."""
        self._enter("list_chats", application_id, after, offset, limit)
        self.replica_asked.append(from_replica)
        numbers = sorted(n for (a, n) in self.chats if a == application_id and n > after)[offset : offset + limit]
        if not numbers and (missing := self._missing(application_id)):
            raise missing
        return [Chat(n, self.chats[(application_id, n)].text, self.chats[(application_id, n)].count) for n in numbers]

    async def find_message(self, application_id: int, chat_number: int, number: int) -> Message:
        """One message; NotFound naming the application, the chat or the message."""
        self._enter("find_message", application_id, chat_number, number)
        row = self.messages.get((application_id, chat_number, number))
        if row is None:
            raise self._missing(application_id, chat_number) or NotFound("message not found")
        return Message(number, row.text)

    async def list_messages(
        self, application_id: int, chat_number: int, after: int, offset: int, limit: int, from_replica: bool = False
    ) -> list[Message]:
        """Messages numbered above ``after`` in number order, skipping ``offset``, at most ``limit``."""
        self._enter("list_messages", application_id, chat_number, after, offset, limit)
        self.replica_asked.append(from_replica)
        numbers = sorted(m for (a, c, m) in self.messages if (a, c) == (application_id, chat_number) and m > after)
        numbers = numbers[offset : offset + limit]
        if not numbers and (missing := self._missing(application_id, chat_number)):
            raise missing
        return [Message(m, self.messages[(application_id, chat_number, m)].text) for m in numbers]

    async def last_chat_number(self, application_id: int) -> int:
        """Highest chat number written (0 if none)."""
        self._enter("last_chat_number", application_id)
        return max((n for (a, n) in self.chats if a == application_id), default=0)

    async def last_message_number(self, application_id: int, chat_number: int) -> int:
        """Highest message number written in the chat (0 if none)."""
        self._enter("last_message_number", application_id, chat_number)
        return max((m for (a, c, m) in self.messages if (a, c) == (application_id, chat_number)), default=0)

    async def locate(self, application_id: int, chat_number: int) -> None:
        """Nothing for an existing chat; NotFound otherwise."""
        self._enter("locate", application_id, chat_number)
        if missing := self._missing(application_id, chat_number):
            raise missing

    async def rename_chat(self, application_id: int, chat_number: int, name: str, version: int) -> bool:
        """Apply the rename if newer; False when the row is missing or newer."""
        self._enter("rename_chat", application_id, chat_number, name, version)
        row = self.chats.get((application_id, chat_number))
        if row is None or row.version >= version:
            return False
        row.text, row.version = name, version
        return True

    async def edit_message(
        self, application_id: int, chat_number: int, message_number: int, body: str, version: int
    ) -> bool:
        """Apply the edit if newer; False when the row is missing or newer."""
        self._enter("edit_message", application_id, chat_number, message_number, body, version)
        row = self.messages.get((application_id, chat_number, message_number))
        if row is None or row.version >= version:
            return False
        row.text, row.version = body, version
        return True

    async def ping(self) -> bool:
        """True (unless a failure is injected)."""
        self._enter("ping")
        return True


class FakeSearch(Faults):
    """Case-insensitive fragment search over the fake repository's messages (number order)."""

    name = "fake"

    def __init__(self, repository: FakeRepository) -> None:
        super().__init__()
        self.repository = repository
        self.unavailable = False

    async def search(
        self, application_id: int, chat_number: int, query: str, offset: int, limit: int, from_replica: bool = False
    ) -> list[SearchHit]:
        """Matching messages; :class:`SearchUnavailable` when told to be down."""
        self._enter("search", application_id, chat_number, query, offset, limit)
        self.repository.replica_asked.append(from_replica)
        if self.unavailable:
            raise SearchUnavailable("search backend down")
        hits = [
            SearchHit(m, row.text)
            for (a, c, m), row in sorted(self.repository.messages.items())
            if (a, c) == (application_id, chat_number) and query.lower() in row.text.lower()
        ]
        return hits[offset : offset + limit]

    async def close(self) -> None:
        """Nothing to release."""


# -- the tenant directory (cached MySQL lookups) and the rate limiter (Redis) --------------------------------
class FakeTenantDirectory(Faults):
    """Looks tokens up in the fake applications, with no cache (staleness is the real directory's own test)."""

    def __init__(self, applications: FakeApplications) -> None:
        super().__init__()
        self.applications = applications

    async def lookup(self, token: str, fresh: bool = False) -> Application | None:
        """The application the token names now, or None."""
        self._enter("lookup", token, fresh)
        return self.applications._find(token)

    async def lookup_digest(self, digest: str) -> Application | None:
        """The application whose current (or former, in its grace period) token has this digest, or None."""
        self._enter("lookup_digest", digest)
        return self.applications._find_digest(digest)

    def invalidate(self, token: str) -> None:
        """Nothing cached."""
        self._enter("invalidate", token)


class FakeRateLimiter(Faults):
    """Counts requests per application in the current window; :meth:`next_second` starts a new one."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, int] = defaultdict(int)

    def next_second(self) -> None:
        """A new one-second window."""
        self.counts.clear()

    async def admit(self, application_id: int, limit: int) -> bool:
        """Count this request; False when over ``limit``."""
        self._enter("admit", application_id, limit)
        self.counts[application_id] += 1
        return self.counts[application_id] <= limit


class FakeSearchBudget(Faults):
    """Search time per application, as the Redis adapter keeps it (GCRA), on a clock the test moves."""

    def __init__(self, rate: float = 0.1, burst: float = 2.0) -> None:
        super().__init__()
        self.rate, self.burst, self.now = rate, burst, 1000.0
        self.tat: dict[int, float] = defaultdict(float)

    async def wait_seconds(self, application_id: int) -> float:
        """0 when the application may search now."""
        self._enter("wait_seconds", application_id)
        return max(0.0, self.tat[application_id] - self.now - self.burst / self.rate)

    async def spend(self, application_id: int, seconds: float) -> None:
        """Charge a search."""
        self._enter("spend", application_id, seconds)
        self.tat[application_id] = max(self.tat[application_id], self.now) + seconds / self.rate


# -- one wired world ------------------------------------------------------------------------------------------
class FakeClock:
    """Wall-clock time a test moves by hand (stream tickets expire by it)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


TICKET_KEY = b"unit-test-stream-ticket-key-0123456789"


class FakeEventLog:
    """The event log port: answers the scan a test set (``answer``), else an empty log; records each call."""

    def __init__(self) -> None:
        self.answer: EventScan | None = None
        self.calls: list[tuple[int, int, int, bool]] = []

    async def scan(self, application_id: int, after: int, limit: int, from_replica: bool = False) -> EventScan:
        self.calls.append((application_id, after, limit, from_replica))
        return self.answer or EventScan([], full=False, oldest=None, head=after)


class FakeWebhookEndpoints(Faults):
    """``chat_common.tenancy.webhooks.WebhookEndpoints`` over a dict, with its rules: names unique per application,
    at most ``max_endpoints``, each manager changes only its own, enabling a disabled endpoint makes it healthy,
    new endpoints start at the log's ``head``, replay refuses cursors before ``oldest`` - 1 or beyond ``head``, and
    no sealing key (``sealing`` False) refuses what would store a secret. ``secrets`` holds what the real store
    seals (name -> the secrets it signs with)."""

    def __init__(self, max_endpoints: int = webhook_rules.MAX_ENDPOINTS, policy: EgressPolicy | None = None) -> None:
        super().__init__()
        self.max_endpoints = max_endpoints
        self.policy = policy or EgressPolicy()
        self.rows: dict[tuple[int, str], WebhookEndpoint] = {}
        self.secrets: dict[tuple[int, str], list[str]] = {}
        self.held: dict[tuple[int, str], int] = {}  # deliveries held back (the dispatcher's), for replay to drop
        self.sealing = True
        self.head = 0
        self.oldest: int | None = None
        self._ids = itertools.count(1)

    def _owned(self, application_id: int, name: str, managed_by: str | None) -> WebhookEndpoint:
        endpoint = self.rows.get((application_id, name))
        if endpoint is None:
            raise webhook_rules.EndpointNotFound(name)
        if managed_by is not None and endpoint.managed_by != managed_by:
            raise webhook_rules.EndpointConflict(f"webhook endpoint {name!r} is managed by another manager")
        return endpoint

    def list(self, application_id: int) -> list[WebhookEndpoint]:
        self._enter("list", application_id)
        return sorted((e for (a, _), e in self.rows.items() if a == application_id), key=lambda e: e.id)

    def get(self, application_id: int, name: str) -> WebhookEndpoint | None:
        self._enter("get", application_id, name)
        return self.rows.get((application_id, name))

    def create(self, application_id: int, spec: EndpointSpec, managed_by: str = "api") -> WebhookEndpoint:
        self._enter("create", application_id, spec, managed_by)
        if not self.sealing:
            raise webhook_rules.SealingUnavailable()
        if (application_id, spec.name) in self.rows:
            raise webhook_rules.EndpointConflict(f"a webhook endpoint named {spec.name!r} exists already")
        if len(self.list(application_id)) >= self.max_endpoints:
            raise webhook_rules.EndpointConflict(f"an application has at most {self.max_endpoints} webhook endpoints")
        secret = spec.secret or webhook_rules.new_secret()
        endpoint = WebhookEndpoint(
            spec.name, spec.url, spec.event_types, spec.enabled, "healthy", self.head, managed_by,
            id=next(self._ids), application_id=application_id, created_at=time.time(),
        )  # fmt: skip
        self.rows[(application_id, spec.name)] = endpoint
        self.secrets[(application_id, spec.name)] = [secret]
        return dataclasses.replace(endpoint, secret=secret)

    def update(
        self, application_id: int, name: str, changes: EndpointChanges, managed_by: str | None = "api"
    ) -> WebhookEndpoint:
        self._enter("update", application_id, name, changes, managed_by)
        return self._update(application_id, name, changes, managed_by, revive=True)

    def _update(
        self, application_id: int, name: str, changes: EndpointChanges, managed_by: str | None, revive: bool
    ) -> WebhookEndpoint:
        endpoint = self._owned(application_id, name, managed_by)
        given = {k: getattr(changes, k) for k in webhook_rules.CHANGE_FIELDS}
        values: dict = {k: v for k, v in given.items() if v is not None}
        if changes.enabled and (not endpoint.enabled or (revive and endpoint.state == "disabled")):
            values.update(state="healthy", failing_since=None, disabled_at=None, disabled_reason=None)
        self.rows[(application_id, name)] = endpoint = dataclasses.replace(endpoint, **values)
        return endpoint

    def delete(self, application_id: int, name: str, managed_by: str | None = "api") -> None:
        self._enter("delete", application_id, name, managed_by)
        self._owned(application_id, name, managed_by)
        del self.rows[(application_id, name)]

    def rotate_secret(
        self,
        application_id: int,
        name: str,
        secret: str | None = None,
        grace_seconds: int = 86_400,
        managed_by: str | None = "api",
    ) -> WebhookEndpoint:
        self._enter("rotate_secret", application_id, name, secret, grace_seconds, managed_by)
        if not self.sealing:
            raise webhook_rules.SealingUnavailable()
        secret = webhook_rules.check_secret(secret) if secret is not None else webhook_rules.new_secret()
        grace = check_grace_seconds(grace_seconds)
        endpoint = self._owned(application_id, name, managed_by)
        signing = self.secrets[(application_id, name)]
        self.secrets[(application_id, name)] = [secret, signing[0]] if grace else [secret]
        expires = time.time() + grace if grace else None
        self.rows[(application_id, name)] = endpoint = dataclasses.replace(endpoint, previous_secret_expires_at=expires)
        return dataclasses.replace(endpoint, secret=secret)

    def sync_managed(self, application_id: int, specs: list[EndpointSpec]) -> webhook_rules.SyncResult:
        """The operator's sync, by the real store's rules (its docstring), minus the transaction."""
        self._enter("sync_managed", application_id, specs)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise Invalid("spec.webhooks names its endpoints more than once")
        current = {e.name: e for e in self.list(application_id)}
        if taken := sorted(n for n in names if n in current and current[n].managed_by != "k8s"):
            raise webhook_rules.EndpointConflict(f"webhook endpoint {taken[0]!r} is managed through the admin API")
        unmanaged = sum(1 for e in current.values() if e.managed_by != "k8s")
        if unmanaged + len(specs) > self.max_endpoints:
            raise webhook_rules.EndpointConflict(f"an application has at most {self.max_endpoints} webhook endpoints")
        created, updated, deleted, waiting = [], [], [], []
        for name, endpoint in current.items():
            if endpoint.managed_by == "k8s" and name not in names:
                del self.rows[(application_id, name)]
                deleted.append(name)
        for spec in specs:
            if spec.name not in current:
                if spec.secret is None:
                    waiting.append(spec.name)
                else:
                    self.create(application_id, spec, managed_by="k8s")
                    created.append(spec.name)
                continue
            endpoint = current[spec.name]
            before = (endpoint.url, endpoint.event_types, endpoint.enabled, endpoint.state)
            changes = EndpointChanges(spec.url, spec.event_types, spec.enabled)
            after = self._update(application_id, spec.name, changes, None, revive=False)
            changed = before != (after.url, after.event_types, after.enabled, after.state)
            if spec.secret is not None and self.secrets[(application_id, spec.name)][0] != spec.secret:
                if not self.sealing:
                    raise webhook_rules.SealingUnavailable()
                self.secrets[(application_id, spec.name)] = [spec.secret, self.secrets[(application_id, spec.name)][0]]
                changed = True
            if changed:
                updated.append(spec.name)
        endpoints = tuple(self.list(application_id))
        return webhook_rules.SyncResult(tuple(created), tuple(updated), tuple(deleted), endpoints, tuple(waiting))

    def dispatcher_sets(self, application_id: int, name: str, **state: object) -> None:
        """What the delivery service writes (state, failing_since, disabled_*, last_*): a test plays it."""
        key = (application_id, name)
        self.rows[key] = dataclasses.replace(self.rows[key], **state)

    def replay(self, application_id: int, name: str, from_cursor: object) -> WebhookEndpoint:
        self._enter("replay", application_id, name, from_cursor)
        cursor = webhook_rules.check_cursor(from_cursor)
        endpoint = self._owned(application_id, name, None)
        if cursor > self.head:
            raise Invalid(f"from is beyond the event log's head ({self.head})")
        if self.oldest is not None and cursor + 1 < self.oldest:
            raise webhook_rules.CursorExpired("this cursor is older than the event log's retention")
        self.held.pop((application_id, name), None)
        endpoint = dataclasses.replace(
            endpoint, position=cursor, state="healthy", failing_since=None, disabled_at=None, disabled_reason=None
        )
        self.rows[(application_id, name)] = endpoint
        return endpoint


@dataclass
class World:
    """Every fake of one service, to arrange and inspect from a test."""

    applications: FakeApplications
    numbering: FakeNumbering
    recovery: FakeRecovery
    publisher: FakePublisher
    idempotency: FakeIdempotency
    stored_keys: FakeStoredKeys
    repository: FakeRepository
    search: FakeSearch
    topology: Topology
    tenants: FakeTenantDirectory
    rate_limiter: FakeRateLimiter
    search_budget: FakeSearchBudget
    clock: FakeClock = field(default_factory=lambda: FakeClock())
    events: FakeEventLog = field(default_factory=FakeEventLog)
    webhooks: FakeWebhookEndpoints = field(default_factory=FakeWebhookEndpoints)

    def application(self, name: str = "acme") -> Application:
        """A new application (as an admin creates it)."""
        return self.applications.create(name)[0]

    def deliver(self) -> int:
        """Play the writers: apply everything published so far, in order; returns how many were applied."""
        published, self.publisher.published = self.publisher.published, []
        for queue, payload in published:
            self.repository.apply(queue, payload)
        return len(published)

    def payloads(self, queue: str = "") -> list[dict]:
        """The bodies published so far (to the queue whose name ends with ``queue``)."""
        return [payload for name, payload in self.publisher.published if name.endswith(queue)]


def build(limits: Limits | None = None, recovery_opens_after: int | None = 1) -> tuple[ChatService, World]:
    """A real :class:`ChatService` over fresh fakes (numbering open on a fresh system)."""
    applications = FakeApplications()
    numbering = FakeNumbering()
    applications.cleanups.append(numbering.forget)
    repository = FakeRepository(applications)
    world = World(
        applications=applications,
        numbering=numbering,
        recovery=FakeRecovery(numbering, recovery_opens_after),
        publisher=FakePublisher(),
        idempotency=FakeIdempotency(numbering),
        stored_keys=FakeStoredKeys(),
        repository=repository,
        search=FakeSearch(repository),
        topology=Topology("unit", (1, 5, 30)),
        tenants=FakeTenantDirectory(applications),
        rate_limiter=FakeRateLimiter(),
        search_budget=FakeSearchBudget(),
    )
    service = ChatService(
        applications=world.applications,
        repository=world.repository,
        numbers=Numberer(
            store=world.numbering,
            counters=world.repository,
            recovery=world.recovery,
            idempotency=world.idempotency,
            stored_keys=world.stored_keys,
        ),
        publisher=world.publisher,
        topology=world.topology,
        limits=limits or Limits(),
        search=world.search,
        tenants=world.tenants,
        rate_limiter=world.rate_limiter,
        search_budget=world.search_budget,
        tickets=TicketSigner((TICKET_KEY,), clock=world.clock),
        events=world.events,
        webhooks=world.webhooks,
        egress=EgressPolicy(allow_http=True),  # receivers of unit tests are http://example.com
    )
    return service, world


async def chat_with_messages(service, world, count: int = 0):
    """An application with one written chat holding ``count`` written messages."""
    app = world.application()
    await service.create_chat(app.token, "room")
    for i in range(count):
        await service.create_message(app.token, 1, f"message {i + 1}")
    world.deliver()
    return app
