"""Re-open numbering after Redis lost its data, without ever handing out a number twice.

A number (or edit version) handed out before the loss may still be on its way to MySQL: in an API process waiting
for its publish confirm, in a work queue, in a retry tier, or in a writer's unacknowledged batch. Counters are
re-seeded from MySQL, so a lost slot may re-open only once every such message is committed (or dead-lettered:
never written). Both rules below start once the grace period (the publish timeout) has passed since the loss was
first seen (``T``, per slot); either one re-opens.

**Coarse rule** (cheap; holds at once on an idle system): the work queues and their retry tiers hold no ready
message, and every consumer the broker knows of reported, in a heartbeat since ``T`` written before that count
and in another written after it, that it holds no unacknowledged message (a writer's held retry-tier messages
count) and received no delivery between the two (``deliveries`` unchanged). A count sees only ready messages and
a heartbeat is a moment old, so without the bracket a message moving between a queue and a writer — a drained
retry tier hands one back every second — could be in neither snapshot.

**Precise rule** (holds under any steady load of the other slots' applications). Its ingredients:

- *Stamps.* The API stamps every create and edit with the time just before its number or version was handed out
  (``x-published-at-ms``; :func:`chat_api.adapters.publisher.stamp_numbering`; a replay: just before its idempotency
  claim). The publisher neither sends it nor waits for its confirm later than ``stamp + publish timeout``. Writers
  keep the stamp on every retry-tier hop; dead-lettering keeps the headers. No stamp (an older API) reads as 0.
- *Heartbeats.* Every writer reports every 0.2 s (:func:`chat_common.writer.format_heartbeat`) the lowest stamp
  among the deliveries it holds unacknowledged (``oldest``), the stamp of the latest first-attempt delivery it
  received (``last``) and how many of those it received (``firsts``), its broker connection number
  (``session``), the heartbeat's own sequence number (``beat``) and how many deliveries of ``q`` and of its retry
  tiers it received in all (``deliveries``).
- *Deferral ledger.* Before a writer sends a message to a retry tier (so before it acknowledges the original) it
  adds ``digest -> stamp`` to ``RedisKeys.deferred``; once a retried or redelivered message is committed or
  dead-lettered, and before it is acknowledged, it removes it (:class:`chat_common.consumer_hooks.DeferralLedger`;
  both idempotent). ``RedisKeys.deferred_since`` says since when the ledger is complete (set again by the writers
  within 0.2 s after Redis lost it). The retry queues themselves cannot be read without consuming them.
- *Drained tiers.* The writers of ``q`` consume its retry tiers and hold each message until due
  (:mod:`chat_common.retry_tiers`); a held tier message counts in the writer's heartbeat like a held delivery of
  ``q`` (``oldest``). Assumption (drain): a writer returns a held tier message to ``q`` within 1 s of its due time,
  and a tier message is due at most the longest retry delay after it was sent to the tier.

With the cutoff ``C = T + grace`` and the evidence time ``E = max(C + grace, deferred_since + longest retry delay
+ 1 s)``, a round that starts after ``E`` reads the queue counts (ready, consumers) ``Q1``; four heartbeat snapshots
``H1..H4``, 0.5, 0.5, 0.5 and 0.8 s after the previous read; the ledger; the queue counts ``Q2``. The slots re-open when

(a) the ledger holds no stamp below ``C`` and ``deferred_since`` did not change during the round;

and for every work queue ``q``, calling *live* the writers of ``q`` whose beat numbers grow ``H1 < H2 < H3`` and
then by at least 2 to ``H4`` (so their ``H4`` beat was written at least one beat interval after the ``H3`` read),
all within one session:

(b) ``q`` had no ready message at ``Q1``, or a live writer received, between its ``H2`` and ``H3`` beats, a
    first-attempt delivery stamped at or after ``E``;
(c) no live writer reports in ``H4`` a held message stamped below ``C``;
(e) the broker counted exactly as many consumers of ``q`` as there are live writers, at ``Q1`` and at ``Q2``;
(f) no retry tier of ``q`` (nor one of an earlier version still there) had a ready message at ``Q1``.

*Why nothing with a pre-loss number is left then.* Let ``M`` carry a number of a lost slot handed out before the
loss. Its stamp ``s`` is below ``T`` (taken before the number was handed out; the numbering script refuses to
number without the slot's epoch), so below ``C``. ``M`` reached its work queue ``q`` before ``s + grace < E``, or
never will. Until it is committed or dead-lettered, ``M`` is in one of these places:

- *Ready in q, never deferred:* enqueued before ``E``, so before ``Q1``. If ``q`` had nothing ready at ``Q1``,
  ``M`` had been dispatched. Otherwise a delivery ``X`` stamped at or after ``E`` was published after ``E``, so
  enqueued after ``M``; a queue dispatches in order, so ``M`` was dispatched before ``X`` (requeues: below).
- *Dispatched to a consumer:* by (e) the consumers during ``Q1..Q2`` are exactly the live writers, whose
  connections did not change. Assumption (transit): a delivery the broker dispatched is in the writer's batch,
  and so in its next heartbeat's ``oldest``, within 0.2 s (one beat interval; a writer stuck in a longer turn of
  its loop does not beat, is not live, and (e) fails). ``M`` dispatched before ``Q1`` or before ``X`` was
  dispatched before the ``H3`` read (``X`` was received before its writer's ``H3`` beat), so it is held in some
  live writer's ``H4`` report: (c). ``X`` was received after its writer's ``H2`` beat, written after the ``H1``
  read, 0.5 s after ``Q1``: so ``X`` was dispatched after ``Q1``.
- *Requeued* (the broker returns a closing channel's unacknowledged messages to the head of ``q``): a channel
  that closed between ``Q1`` and ``Q2`` changed a consumer count or a session, (e). One that closed before
  ``Q1`` left ``M`` ready at the head at ``Q1``: the empty branch of (b) fails, and ``X``, dispatched after
  ``Q1``, came after ``M``, which was then held at ``H4``: (c). One that closes after ``Q2`` held ``M`` at
  ``H4``: (c).
- *Deferred* (in a retry tier, or back in ``q`` behind newer messages): its ledger entry was written before the
  writer let go of it and is removed only once it is committed or dead-lettered: (a). If the ledger itself was
  lost at ``V <= deferred_since``, a message deferred before ``V`` was due by ``V + longest delay``: if a writer
  held it, it was back in ``q`` by ``V + longest delay + 1 s <= E <= Q1`` (the drain assumption) and is covered like
  any message ready in ``q``; if none did, it was still ready in its tier at ``Q1``: (f). A loss during the round
  changes ``deferred_since``.
- *In an API process:* sent and confirmed, sent and given up (then in ``q`` like the others), or never sent,
  by ``s + grace < E``.

Messages stamped at or after ``C`` may be anywhere: they were numbered after the loss was seen, never in a lost
slot before it re-opens. Clocks: the API processes' and writers' clocks are assumed to agree within a fraction of
the grace period (stamps, ``T`` and ``E`` are compared across processes). A ledger entry whose message was
removed from the broker by hand (a purged queue) keeps the precise rule waiting; the coarse rule still re-opens
once everything is drained (or delete ``RedisKeys.deferred``). Cost: a round takes ~2.5 s and two short broker
connections; the ledger is written only for batches that retry or hold retried or redelivered messages.
Under retries the precise rule holds only in a round that finds every tier's messages held by its writers (f).

Only then is a new epoch written; the API's loads of counters from MySQL carry the epoch they read under.

Epochs are per Redis Cluster hash slot (``RedisKeys.slot_epoch``, in the slot of the applications it guards):
a shard that lost its data pauses only the applications of its slots while the others keep numbering; on a
single Redis every slot is on the one server, and a restart closes all of them. A missing epoch means a loss only
if the slot ever opened: a durable marker per slot in MySQL (``system_markers``, ``numbering_opened:<slot>``) is
written before the slot's first epoch, so a brand-new deployment — and a slot used for the first time on an old
one — opens at once instead of waiting out a recovery that has nothing to recover. Requests racing that first
opening wait for it (:class:`SlotOpening`: the marker is written before the epoch, so a process that reads the
marker before the epoch lands must not take the slot for a lost one; the opening in Redis tells it apart, and any
process can finish it). (A system that opened before
per-slot markers existed has only the ``numbering_opened`` marker: its slots recover once, unless the single epoch
of that version is still in Redis.) The epoch's value says which happened and when
(``<id>:fresh|recovered:<unix>``), which tells idempotency lookups whether Redis may have forgotten keys
(``keys_may_be_forgotten``). One API process at a time runs the recovery of a slot (a short Redis lock per
slot); the others answer 503 meanwhile. Slots lose data only when a shard loses its master and every replica
that acknowledged its writes (see ``REDIS_REPLICAS_TO_ACK``): a failover to a replica keeps every epoch and number.
Redis is asked on the event loop; the broker's queue counts come from a short blocking connection (to the first node
of ``RABBITMQ_URL`` that answers, :class:`chat_common.broker.BrokerNodes`) run in a worker thread, so an attempt
never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

import pika.exceptions
import redis.asyncio as redis
from redis.exceptions import RedisError
from sqlalchemy import bindparam, literal, or_, select
from sqlalchemy.dialects.mysql import insert

from chat_api.adapters.database import Database
from chat_api.model import NumberingStillOpening, Unavailable
from chat_common.broker import BrokerNodes
from chat_common.idempotency import KEY_LIFETIME_SECONDS
from chat_common.keys import RedisKeys, application_slot
from chat_common.tables import system_markers
from chat_common.topology import Topology
from chat_common.writer import WriterHeartbeat, parse_heartbeat

log = logging.getLogger(__name__)

# Waits before the four heartbeat snapshots of the precise rule: writers beat every 0.2 s when busy and every
# 0.25 s when idle, so each window holds a beat, and the last one two.
SETTLE_SECONDS = (0.5, 0.5, 0.5, 0.8)
RETRY_EXPIRY_SLACK = 1.0  # a writer returns a held retry-tier message this long after it is due at most
LOCK_MS = 6000  # a recovery round (the precise rule reads the writers four times) takes ~2.5 s


FRESH, RECOVERED = "fresh", "recovered"
NUMBERING_OPENED = "numbering_opened"


def new_epoch(kind: str, now: float) -> str:
    """An epoch value: unique, and saying whether it opened a new system or followed a loss, and when."""
    return f"{uuid.uuid4().hex}:{kind}:{int(now)}"


def keys_may_be_forgotten(epoch: str, now: float) -> bool:
    """True when Redis may have lost idempotency keys younger than their lifetime: a loss was recovered less
    than a key lifetime ago, numbering is closed (''), or the epoch does not say (written by an older version)."""
    _, kind, opened = [*epoch.split(":"), "", "", ""][:3]
    if kind == FRESH:
        return False
    if kind == RECOVERED and opened.isdigit():
        return now - int(opened) < KEY_LIFETIME_SECONDS
    return True


SLOTS_MARKER = "numbering_slots"  # this system opened under per-slot epochs (absent: it predates them)
SLOT_MARKER_PREFIX = f"{NUMBERING_OPENED}:"
NEW, OPENED, LEGACY = "new", "opened", "legacy"

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

    async def opened_slots(self) -> set[int]:
        """Every slot that ever opened."""
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


class SlotOpenings(Protocol):
    """The Redis side of opening slots (adapter: :class:`RedisSlotOpenings`; fake: ``tests/unit/fakes.py``).

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


class SlotMarkers(Protocol):
    """The durable per-slot facts in MySQL (adapter: :class:`NumberingMarker`)."""

    async def slot_state(self, slot: int) -> str:
        """OPENED, NEW or LEGACY (see :meth:`NumberingMarker.slot_state`)."""
        ...

    async def open_slot(self, slot: int, state: str) -> None:
        """Record durably that ``slot`` opens (idempotent)."""
        ...


class RedisSlotOpenings:
    """:class:`SlotOpenings` as three Lua scripts over the slot's epoch and opening keys."""

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


OPEN_WAIT_SECONDS = 5.0  # at least; NumberingRecovery waits as long as a create may wait for its publish confirm
OPEN_ROUNDS = 5  # an opening that keeps ending under us (Redis losing data over and over) is not waited out


class SlotOpening:
    """Opens a slot for its first use without refusing anyone, and tells a slot that lost its epoch (False).

    Every API process runs the same steps, so none has to wait for another (a process that dies mid-way leaves
    nothing the others cannot finish): (1) find the slot's epoch, else its opening (created if missing); (2) read
    the slot's durable state in MySQL; if it never held numbers (NEW, or LEGACY with the previous version's epoch
    still in Redis), promote the opening with an epoch, unless someone did; (3) if the opening carries an epoch,
    write the slot's marker in MySQL, then write the epoch and end the opening in one step. An opening whose
    incarnation stays empty after a read that found the marker means the slot held numbers: a loss.

    *Why this never opens a slot that lost numbers.* An epoch written here comes from an opening promoted after a
    read that found no marker, under the same incarnation. The read came after the incarnation existed; the
    incarnation lives in the slot's shard, so while it exists the shard lost nothing since before the read; and
    every epoch ever written for the slot had its marker committed first. So no epoch (and no number) of the slot
    existed before the read, nor was lost after it: the epoch is written with NX, and a loss would have ended the
    incarnation, making the promotion or the completion fail. A read that found the marker never promotes, so a
    slot that held numbers re-opens only through :class:`NumberingRecovery`'s rules.

    In one process, concurrent requests for one slot share one run of these steps (single flight), each waiting
    at most ``wait_seconds`` (then :class:`~chat_api.model.NumberingStillOpening`; the run goes on for the next).
    """

    def __init__(self, openings: SlotOpenings, markers: SlotMarkers, wait_seconds: float = OPEN_WAIT_SECONDS) -> None:
        self.openings = openings
        self.markers = markers
        self.wait_seconds = wait_seconds
        self._flights: dict[int, asyncio.Task[bool]] = {}

    async def open(self, slot: int) -> bool:
        """True when ``slot`` has its epoch (now, or it was opened for its first use); False when it lost it."""
        flight = self._flights.get(slot)
        if flight is None:
            flight = asyncio.create_task(self._open(slot), name=f"open-slot-{slot}")
            self._flights[slot] = flight
            flight.add_done_callback(self._landed)
        done, _ = await asyncio.wait({flight}, timeout=self.wait_seconds)  # never cancels the shared run
        if not done:
            raise NumberingStillOpening(f"slot {slot} still opening after {self.wait_seconds:.1f} s")
        return flight.result()

    def _landed(self, flight: asyncio.Task[bool]) -> None:
        for slot, current in list(self._flights.items()):
            if current is flight:
                del self._flights[slot]
        if not flight.cancelled():
            flight.exception()  # retrieved here: the waiters that timed out never will

    async def _open(self, slot: int) -> bool:
        for _ in range(OPEN_ROUNDS):
            opening = await self.openings.begin(slot, uuid.uuid4().hex)
            if opening is None:
                return True
            incarnation, _, epoch = opening.partition("|")
            state = await self.markers.slot_state(slot)
            if not epoch:
                candidate = ""
                if state == NEW:
                    candidate = new_epoch(FRESH, time.time())
                elif state == LEGACY:  # the single epoch of the previous version still there: Redis lost nothing
                    candidate = await self.openings.legacy_epoch() or ""
                promoted = await self.openings.promote(slot, incarnation, candidate)
                if promoted is None:
                    continue  # that opening ended meanwhile (completed, or lost with the shard): look again
                opening, epoch = promoted, promoted.partition("|")[2]
                if not epoch:
                    return False  # the slot held numbers and lost its epoch: a recovery, not an opening
            if state != OPENED:
                await self.markers.open_slot(slot, state)  # durable before any number is handed out under the epoch
            completed = await self.openings.complete(slot, opening)
            if completed == 2:
                log.info("numbering opened for slot %d (%s)", slot, state)
            if completed:
                return True
        raise NumberingStillOpening(f"slot {slot}: its opening ended {OPEN_ROUNDS} times under way")


Beats = dict[str, WriterHeartbeat]
Counts = dict[str, tuple[int, int]]


def queue_settled(
    queue: str,
    first: Counts,
    second: Counts,
    beats: tuple[Beats, Beats, Beats, Beats],
    cutoff: float,
    evidence: float,
    tiers: tuple[str, ...] = (),
) -> bool:
    """Conditions (b), (c), (e) and (f) of the precise rule for one work queue (see the module docstring).

    ``first``/``second``: (ready, consumers) read before and after the four heartbeat snapshots ``beats``;
    ``tiers``: the queue's retry tiers.
    """
    if any(first.get(tier, (0, 0))[0] for tier in tiers):
        return False  # (f) a retried message no writer holds: it may have been deferred before the ledger was lost
    h1, h2, h3, h4 = beats
    live: list[tuple[WriterHeartbeat, WriterHeartbeat, WriterHeartbeat]] = []
    for field, b4 in h4.items():
        if not field.startswith(f"{queue}|") or not all(field in h for h in (h1, h2, h3)):
            continue
        b1, b2, b3 = h1[field], h2[field], h3[field]
        if b1.beat < b2.beat < b3.beat < b4.beat - 1 and b1.session == b2.session == b3.session == b4.session:
            live.append((b2, b3, b4))
    consumers = {first.get(queue, (0, 0))[1], second.get(queue, (0, 0))[1]}
    if consumers != {len(live)}:  # (e) a consumer came, went or reconnected: the broker may have requeued
        return False
    if any(b4.oldest is not None and b4.oldest < cutoff for _, _, b4 in live):
        return False  # (c) a writer still holds a message stamped before the cutoff
    if first.get(queue, (0, 0))[0] == 0:
        return True  # (b) nothing was waiting in the queue at a time after every such message was enqueued
    # (b) a first delivery stamped at or after ``evidence``, received between the H2 and H3 beats
    return any(b3.firsts > b2.firsts and b3.last >= evidence for b2, b3, _ in live)


class NumberingRecovery:
    """Decides when numbering of a slot may resume after its data was lost; see the module docstring.

    The request path (:meth:`attempt`) only opens slots that need no recovery and registers the others; the
    watchdog (:meth:`watch`, one task per process) finds slots that lost their epoch without waiting for traffic and
    runs the recovery conditions once for every registered slot together, so a loss of many slots costs one broker
    check a second per process, not one per slot.
    """

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
        self.client = client
        self.marker = marker
        # A first create may wait for the opening as long as it may wait for its publish confirm (the grace period).
        wait = max(OPEN_WAIT_SECONDS, grace_seconds)
        self.opening = SlotOpening(RedisSlotOpenings(client, keys), marker, wait_seconds=wait)
        self.keys = keys
        self.broker = broker  # for the queue counts (chat_common.broker.CHECK profile)
        self.topology = topology
        self.grace_seconds = grace_seconds
        self.sweep_slots = sweep_slots  # opened slots whose epoch the watchdog checks per round (rotating)
        self.pending: set[int] = set()  # slots this process found without an epoch after they had opened
        self._opened: list[int] = []
        self._opened_at = 0.0
        self._sweep_from = 0

    async def attempt(self, application_id: int) -> bool:
        """One cheap attempt for the application's slot; True when its numbering is open (again).

        A slot that never held numbers opens at once (concurrent first requests wait for that opening, at most
        the publish timeout and at least ``OPEN_WAIT_SECONDS``, then :class:`~chat_api.model.NumberingStillOpening`);
        one that lost its epoch is left to the watchdog."""
        return await self.open_slot(application_slot(application_id))

    async def open_slot(self, slot: int) -> bool:
        """True when ``slot`` is open, or was opened now because it never held numbers (:class:`SlotOpening`:
        concurrent first requests wait for it, bounded); else it lost its epoch, and is registered for recovery."""
        if await self.opening.open(slot):
            self.pending.discard(slot)
            return True
        self.pending.add(slot)
        await self.client.set(self.keys.slot_recovery_started(slot), repr(time.time()), nx=True)
        return False

    async def closed_slots(self, slots: list[int] | None = None) -> list[int]:
        """Those of ``slots`` (default: every slot that ever opened) whose epoch is missing now."""
        if slots is None:
            slots = sorted(await self.marker.opened_slots())
        if not slots:
            return []
        pipe = self.client.pipeline(transaction=False)
        for slot in slots:
            pipe.exists(self.keys.slot_epoch(slot))
        present = await pipe.execute()
        return [slot for slot, there in zip(slots, present, strict=True) if not there]

    async def recover(self) -> set[int]:
        """One bounded recovery round over the registered slots; returns the slots it re-opened."""
        if not self.pending:
            return set()
        now = time.time()
        ready: dict[int, float] = {}
        for slot in sorted(self.pending):
            started_key = self.keys.slot_recovery_started(slot)
            if await self.client.exists(self.keys.slot_epoch(slot)):  # another process re-opened it
                self.pending.discard(slot)
                continue
            await self.client.set(started_key, repr(now), nx=True)
            started = float(await self.client.get(started_key) or now)
            if now - started >= self.grace_seconds:
                ready[slot] = started
        locked = [
            slot
            for slot in ready
            if await self.client.set(self.keys.slot_recovery_lock(slot), "1", nx=True, px=LOCK_MS)
        ]
        if not locked:
            return set()
        opened: set[int] = set()
        try:
            # One check for all of them: writers idle since the latest loss implies idle since each earlier one.
            since = max(ready[slot] for slot in locked)
            if await self._everything_drained(since):
                rule = "coarse"
            elif await self._settled(since):
                rule = "precise"
            else:
                return set()
            for slot in locked:
                if await self.client.set(self.keys.slot_epoch(slot), new_epoch(RECOVERED, time.time()), nx=True):
                    log.warning(
                        "numbering of slot %d re-opened after %.1fs (%s rule); counters reload from MySQL",
                        slot,
                        time.time() - ready[slot],
                        rule,
                    )
                await self.client.delete(self.keys.slot_recovery_started(slot))
                self.pending.discard(slot)
                opened.add(slot)
            return opened
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("numbering recovery cannot reach the broker: %s", exc)
            return opened
        finally:
            for slot in locked:
                with contextlib.suppress(RedisError):  # the lock expires by itself; never hide the real outcome
                    await self.client.delete(self.keys.slot_recovery_lock(slot))

    async def _everything_drained(self, since: float) -> bool:
        """The coarse rule: every work queue and retry tier empty and every writer idle since ``since``.

        A queue count sees only *ready* messages: one a writer holds (a batch in hand, or a retry held until due)
        is invisible to it, and a writer's heartbeat is a snapshot a moment old. So a message moving between a
        queue and a writer could slip between the count and the heartbeats. The rule therefore brackets the count
        with two heartbeats of every writer — one written before it, one after — and asks each writer to have held
        nothing at both and received nothing in between (its delivery counter unchanged): then no message was in
        any queue at the count, nor in any writer across it.
        """
        before = await self._beats()
        counts = await asyncio.to_thread(self._queue_counts)
        if not self._drained(counts):
            return False
        counted_at = time.time()
        after = await self._beats_after(counted_at, before)
        return after is not None and self._writers_idle_across(since, counted_at, before, after, counts)

    async def _beats_after(self, moment: float, before: Beats, timeout: float = 2.0) -> Beats | None:
        """The heartbeats, once every writer that reported before ``moment`` has reported again after it (None if
        one does not within ``timeout``: it is stuck, or gone — either way the rule cannot conclude now)."""
        deadline = time.monotonic() + timeout
        while True:
            beats = await self._beats()
            waiting = [
                w for w, b in before.items() if time.time() - b.at <= 2.0 and w in beats and beats[w].at <= moment
            ]
            if not waiting:
                return beats
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)

    def _writers_idle_across(self, since: float, counted_at: float, before: Beats, after: Beats, counts) -> bool:
        now = time.time()
        for name, is_work_queue in self._queue_names():
            if not is_work_queue:
                continue
            consumers = counts.get(name, (0, 0))[1]
            idle = 0
            for writer, late in after.items():
                if not writer.startswith(f"{name}|") or now - late.at > 2.0:
                    continue  # a heartbeat left by a writer that is gone: it consumes nothing (prune removes it)
                early = before.get(writer)
                if early is None or early.at <= since or late.at <= counted_at:
                    return False  # a writer that started meanwhile, or reported too long ago
                if early.unacked or late.unacked:
                    return False
                if (early.session, early.deliveries) != (late.session, late.deliveries):
                    return False  # it received something around the count
                idle += 1
            if idle < consumers:
                return False
        return True

    async def _settled(self, lost: float) -> bool:
        """The precise rule for slots lost at ``lost`` (the latest of them): every message stamped before
        ``lost + grace`` is committed or dead-lettered, whatever the other slots' load (module docstring)."""
        cutoff = lost + self.grace_seconds
        since = await self.client.get(self.keys.deferred_since)
        if since is None:  # the ledger itself was lost and no writer has restarted it yet
            return False
        evidence = max(cutoff + self.grace_seconds, float(since) + self._longest_retry + RETRY_EXPIRY_SLACK)
        if time.time() < evidence:
            return False
        first = await asyncio.to_thread(self._queue_counts)
        snapshots = []
        for wait in SETTLE_SECONDS:
            await asyncio.sleep(wait)
            snapshots.append(await self._beats())
        lowest = await self.client.zrange(self.keys.deferred, 0, 0, withscores=True)
        if await self.client.get(self.keys.deferred_since) != since:  # the ledger was lost meanwhile
            return False
        if lowest and lowest[0][1] < cutoff:
            return False  # (d) a message stamped before the cutoff is in a retry tier or on its way back
        second = await asyncio.to_thread(self._queue_counts)
        beats = (snapshots[0], snapshots[1], snapshots[2], snapshots[3])
        return all(
            queue_settled(queue.name, first, second, beats, cutoff, evidence, self._tiers(queue))
            for queue in (self.topology.chats, self.topology.messages)
        )

    @property
    def _longest_retry(self) -> float:
        delays = [d for q in (self.topology.chats, self.topology.messages) for d in q.retry_delays_seconds]
        return float(max(delays, default=0))

    async def _beats(self) -> Beats:
        raw = await self.client.hgetall(self.keys.writer_heartbeats)
        return {(k.decode() if isinstance(k, bytes) else k): parse_heartbeat(v) for k, v in raw.items()}

    async def _sweep(self) -> None:
        """Find opened slots that lost their epoch, ``sweep_slots`` of them per round (all of them, usually)."""
        now = time.monotonic()
        if now - self._opened_at > 10.0:  # slots open rarely: re-read the list every 10 s
            self._opened = sorted(await self.marker.opened_slots())
            self._opened_at = now
        if not self._opened:
            return
        start = self._sweep_from % len(self._opened)
        window = (self._opened[start:] + self._opened[:start])[: self.sweep_slots]
        self._sweep_from = start + len(window)
        self.pending.update(await self.closed_slots(window))

    async def watch(self, interval: float = 1.0) -> None:
        """Every ``interval`` seconds: find slots that lost their epoch and recover them (a task on the loop)."""
        while True:
            try:
                await self._sweep()
                await self.recover()
            except (RedisError, OSError, Unavailable) as exc:  # a dependency is down: the next round retries
                log.debug("numbering watchdog: %s", exc)
            except Exception:  # never let the watchdog die: without it, numbering waits for traffic to recover
                log.exception("numbering watchdog round failed")
            await asyncio.sleep(interval)

    @staticmethod
    def _tiers(queue) -> tuple[str, ...]:
        """The retry tiers of a work queue, with those of earlier versions (counted while they exist)."""
        return (*queue.retry_queues, *queue.legacy_retry_queues)

    def _queue_names(self) -> list[tuple[str, bool]]:
        names = []
        for queue in (self.topology.chats, self.topology.messages):
            names.append((queue.name, True))
            names.extend((tier, False) for tier in self._tiers(queue))
        return names

    def _queue_counts(self) -> dict[str, tuple[int, int]]:
        """(ready messages, consumers) of every work queue and retry tier; a missing queue counts as empty."""
        counts = self.broker.count_queues([name for name, _ in self._queue_names()])
        return {name: count or (0, 0) for name, count in counts.items()}

    @staticmethod
    def _drained(counts: dict[str, tuple[int, int]]) -> bool:
        return all(ready == 0 for ready, _ in counts.values())
