"""Numbering recovery's I/O: re-opening a slot's numbering after Redis lost its data, and opening it the first time.

The rule that decides when a lost slot may re-open — and why nothing with a pre-loss number is left then — is
pure code in :mod:`chat_api.numbering.reopening`; epochs and what they say in :mod:`chat_api.numbering.epochs`.
This module reads what the rule needs: the slot epochs, recovery clocks and locks, the writers' heartbeats and the
deferral ledger from Redis; the queue counts from the broker (a short blocking connection to the first node of
``RABBITMQ_URL`` that answers, :class:`chat_common.clients.broker.BrokerNodes`, run in a worker thread so an attempt
never blocks the loop); the per-slot ``numbering_opened:<slot>`` markers from MySQL (``system_markers``), written before
a slot's first epoch so a brand-new deployment — and a slot used for the first time on an old one — opens at once.
Requests racing that first opening wait for it (:class:`chat_api.numbering.opening.SlotOpening`). One API process at a
time runs the recovery of a slot (a short Redis lock per slot); the others answer 503 meanwhile.
"""

from __future__ import annotations

import logging

import pika.exceptions
import redis.asyncio as redis
from sqlalchemy import bindparam, literal, or_, select
from sqlalchemy.dialects.mysql import insert

from chat_api.adapters.database import Database
from chat_api.model import WriterHeartbeat
from chat_api.numbering.opening import LEGACY, NEW, OPENED
from chat_api.numbering.recovery import SlotRecovery
from chat_common.clients.broker import BrokerNodes
from chat_common.schema.tables import system_markers
from chat_common.wire.heartbeats import parse_heartbeat
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology

log = logging.getLogger(__name__)

NUMBERING_OPENED = "numbering_opened"


SLOTS_MARKER = "numbering_slots"  # this system opened under per-slot epochs (absent: it predates them)
SLOT_MARKER_PREFIX = f"{NUMBERING_OPENED}:"

marker_name = system_markers.c.name
_SLOT_MARKERS = select(marker_name).where(
    or_(
        marker_name == bindparam("slot"),
        marker_name == literal(NUMBERING_OPENED),
        marker_name == literal(SLOTS_MARKER),
    )
)
_OPENED_SLOTS = select(marker_name).where(marker_name.like(literal(f"{SLOT_MARKER_PREFIX}%")))
_SET_MARKER = insert(system_markers).prefix_with("IGNORE").values(name=bindparam("name"))


def slot_marker(slot: int) -> str:
    """The marker row of one slot: written before its first epoch, so a slot's numbers exist only once it is."""
    return f"{SLOT_MARKER_PREFIX}{slot}"


class NumberingMarker:
    """The durable "numbering has opened before" facts, in MySQL: per slot, and for the system as a whole.

    Per slot, so that a slot that never held a number (its applications never created anything) opens at once
    even on an old system: with 16384 slots, an established system keeps meeting slots used for the first time.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._opened: set[int] = set()  # slots known to be marked: markers are never removed
        self._system_marked = False  # NUMBERING_OPENED and SLOTS_MARKER known to be there

    async def slot_state(self, slot: int) -> str:
        """OPENED (the slot held numbers: a missing epoch is a loss), NEW (it never did) or LEGACY (the system
        predates per-slot markers and opened before: any slot may have held numbers)."""
        if slot in self._opened:
            return OPENED
        names = {row[0] for row in await self.db.rows(_SLOT_MARKERS, {"slot": slot_marker(slot)})}
        self._system_marked = self._system_marked or {NUMBERING_OPENED, SLOTS_MARKER} <= names
        if slot_marker(slot) in names:
            self._opened.add(slot)
            return OPENED
        return LEGACY if NUMBERING_OPENED in names and SLOTS_MARKER not in names else NEW

    async def open_slot(self, slot: int, state: str) -> None:
        """Record that ``slot`` opens (idempotent; durable before any number is handed out in it)."""
        if state == NEW and not self._system_marked:  # SLOTS_MARKER first: a legacy system never gets it
            await self.db.execute(_SET_MARKER, {"name": SLOTS_MARKER})
            await self.db.execute(_SET_MARKER, {"name": NUMBERING_OPENED})
            self._system_marked = True
        await self.db.execute(_SET_MARKER, {"name": slot_marker(slot)})
        self._opened.add(slot)

    async def opened_slots(self) -> set[int]:  # noqa: D102 (the protocol's)
        rows = await self.db.rows(_OPENED_SLOTS)
        return {int(row[0][len(SLOT_MARKER_PREFIX) :]) for row in rows}


# The opening of a slot, in Redis (keys of the slot's own tag, so each script stays in one Redis Cluster slot).
# KEYS: epoch, opening   ARGV: a new incarnation id.  The epoch's absence: the opening's value, created if missing.
BEGIN_OPENING = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DEL', KEYS[2]) return false end
local opening = redis.call('GET', KEYS[2])
if opening then return opening end
opening = ARGV[1] .. '|'
redis.call('SET', KEYS[2], opening)
return opening
"""
# KEYS: opening   ARGV: incarnation, epoch ('' to only read).  The opening of that incarnation (its epoch part
# set if it was empty and one is given), or nothing when that incarnation ended.
PROMOTE_OPENING = """
local opening = redis.call('GET', KEYS[1])
if not opening then return false end
local bar = string.find(opening, '|', 1, true)
if string.sub(opening, 1, bar - 1) ~= ARGV[1] then return false end
if bar == #opening and ARGV[2] ~= '' then
  opening = ARGV[1] .. '|' .. ARGV[2]
  redis.call('SET', KEYS[1], opening)
end
return opening
"""
# KEYS: epoch, opening   ARGV: the promoted opening.  1: the epoch is there now (2: set by this call), 0: look again.
COMPLETE_OPENING = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  local epoch = string.sub(ARGV[1], string.find(ARGV[1], '|', 1, true) + 1)
  if redis.call('SET', KEYS[1], epoch, 'NX') then return 2 end
  return 1
end
return redis.call('EXISTS', KEYS[1])
"""


class RedisSlotOpenings:
    """:class:`chat_api.ports.SlotOpenings` as three Lua scripts over the slot's epoch and opening keys."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys
        self._begin = client.register_script(BEGIN_OPENING)
        self._promote = client.register_script(PROMOTE_OPENING)
        self._complete = client.register_script(COMPLETE_OPENING)

    @staticmethod
    def _text(value: bytes | str | None) -> str | None:
        return value.decode() if isinstance(value, bytes) else value

    async def begin(self, slot: int, incarnation: str) -> str | None:  # noqa: D102 (the protocol's)
        keys = [self.keys.slot_epoch(slot), self.keys.slot_opening(slot)]
        return self._text(await self._begin(keys=keys, args=[incarnation]))

    async def promote(self, slot: int, incarnation: str, epoch: str) -> str | None:  # noqa: D102
        return self._text(await self._promote(keys=[self.keys.slot_opening(slot)], args=[incarnation, epoch]))

    async def complete(self, slot: int, opening: str) -> int:  # noqa: D102
        keys = [self.keys.slot_epoch(slot), self.keys.slot_opening(slot)]
        return int(await self._complete(keys=keys, args=[opening]))

    async def legacy_epoch(self) -> str | None:  # noqa: D102
        return self._text(await self.client.get(self.keys.epoch))


class RedisRecoveryState:
    """:class:`chat_api.ports.RecoveryState` in Redis: keys of each slot's own tag, and the writers' shared ones."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    async def has_epoch(self, slot: int) -> bool:  # noqa: D102 (the protocol's)
        return bool(await self.client.exists(self.keys.slot_epoch(slot)))

    async def epochs_present(self, slots: list[int]) -> list[bool]:  # noqa: D102
        pipe = self.client.pipeline(transaction=False)
        for slot in slots:
            pipe.exists(self.keys.slot_epoch(slot))
        return [bool(there) for there in await pipe.execute()]

    async def open_epoch(self, slot: int, epoch: str) -> bool:  # noqa: D102
        return bool(await self.client.set(self.keys.slot_epoch(slot), epoch, nx=True))

    async def note_recovery_start(self, slot: int, now: float) -> float:  # noqa: D102
        key = self.keys.slot_recovery_started(slot)
        await self.client.set(key, repr(now), nx=True)
        return float(await self.client.get(key) or now)

    async def forget_recovery_start(self, slot: int) -> None:  # noqa: D102
        await self.client.delete(self.keys.slot_recovery_started(slot))

    async def lock(self, slot: int, milliseconds: int) -> bool:  # noqa: D102
        return bool(await self.client.set(self.keys.slot_recovery_lock(slot), "1", nx=True, px=milliseconds))

    async def unlock(self, slot: int) -> None:  # noqa: D102
        await self.client.delete(self.keys.slot_recovery_lock(slot))

    async def heartbeats(self) -> dict[str, WriterHeartbeat]:  # noqa: D102
        raw = await self.client.hgetall(self.keys.writer_heartbeats)
        return {(k.decode() if isinstance(k, bytes) else k): parse_heartbeat(v) for k, v in raw.items()}

    async def deferred_since(self) -> bytes | str | None:  # noqa: D102
        return await self.client.get(self.keys.deferred_since)

    async def lowest_deferred(self) -> float | None:  # noqa: D102
        lowest = await self.client.zrange(self.keys.deferred, 0, 0, withscores=True)
        return float(lowest[0][1]) if lowest else None


class BrokerQueueCounts:
    """:class:`chat_api.ports.QueueCounter` over a short blocking connection to the first node that answers."""

    def __init__(self, broker: BrokerNodes) -> None:
        self.broker = broker  # the chat_common.clients.broker.CHECK profile

    def count(self, names: list[str]) -> dict[str, tuple[int, int]]:  # noqa: D102 (the protocol's)
        try:
            counts = self.broker.count_queues(names)
        except pika.exceptions.AMQPError as exc:  # the port speaks OSError: the caller knows no pika
            raise ConnectionError(f"{exc!r}") from exc
        return {name: count or (0, 0) for name, count in counts.items()}


class NumberingRecovery(SlotRecovery):
    """:class:`chat_api.numbering.recovery.SlotRecovery` over Redis, the broker and MySQL markers (the wiring)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: RedisKeys,
        broker: BrokerNodes,
        topology: Topology,
        grace_seconds: float,
        marker: NumberingMarker,
        sweep_slots: int = 1024,
    ) -> None:
        super().__init__(
            RedisRecoveryState(client, keys),
            BrokerQueueCounts(broker),
            RedisSlotOpenings(client, keys),
            marker,
            topology,
            grace_seconds,
            sweep_slots,
        )
        self.broker = broker
