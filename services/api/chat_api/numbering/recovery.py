"""Numbering recovery's orchestration: which slots lost their data, when a round runs, and which rule re-opened them.

The rule itself is :mod:`chat_api.numbering.reopening` (pure); first openings :mod:`chat_api.numbering.opening`.
Every read and write goes through small ports (:mod:`chat_api.ports`): :class:`RecoveryState` (Redis),
:class:`QueueCounter` (the broker), :class:`SlotOpenings` and :class:`SlotMarkers`; the adapters are in
:mod:`chat_api.adapters.recovery`, which also wires them (``NumberingRecovery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from chat_api.model import Unavailable
from chat_api.numbering.epochs import RECOVERED, new_epoch
from chat_api.numbering.opening import OPEN_WAIT_SECONDS, SlotOpening
from chat_api.numbering.reopening import (
    SETTLE_SECONDS,
    Beats,
    drained,
    evidence_time,
    queue_settled,
    still_to_report,
    writers_idle_across,
)
from chat_api.ports import QueueCounter, RecoveryState, SlotMarkers, SlotOpenings
from chat_common.wire.keys import application_slot
from chat_common.wire.topology import Topology

log = logging.getLogger(__name__)

LOCK_MS = 6000  # a recovery round (the precise rule reads the writers four times) takes ~2.5 s


class SlotRecovery:
    """Decides when numbering of a slot may resume after its data was lost (:mod:`chat_api.numbering.reopening`).

    The request path (:meth:`attempt`) only opens slots that need no recovery and registers the others; the
    watchdog (:meth:`watch`, one task per process) finds slots that lost their epoch without waiting for traffic and
    runs the recovery conditions once for every registered slot together, so a loss of many slots costs one broker
    check a second per process, not one per slot.
    """

    def __init__(
        self,
        state: RecoveryState,
        counter: QueueCounter,
        openings: SlotOpenings,
        marker: SlotMarkers,
        topology: Topology,
        grace_seconds: float,
        sweep_slots: int = 1024,
    ) -> None:
        self.state = state  # Redis: epochs, recovery clocks and locks, heartbeats, the deferral ledger
        self.counter = counter  # the broker's queue counts (blocking: run in a thread)
        self.marker = marker
        # A first create may wait for the opening as long as it may wait for its publish confirm (the grace period).
        wait = max(OPEN_WAIT_SECONDS, grace_seconds)
        self.opening = SlotOpening(openings, marker, wait_seconds=wait)
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
        await self.state.note_recovery_start(slot, time.time())
        return False

    async def closed_slots(self, slots: list[int] | None = None) -> list[int]:
        """Those of ``slots`` (default: every slot that ever opened) whose epoch is missing now."""
        if slots is None:
            slots = sorted(await self.marker.opened_slots())
        if not slots:
            return []
        present = await self.state.epochs_present(slots)
        return [slot for slot, there in zip(slots, present, strict=True) if not there]

    async def recover(self) -> set[int]:
        """One bounded recovery round over the registered slots; returns the slots it re-opened."""
        if not self.pending:
            return set()
        now = time.time()
        ready: dict[int, float] = {}
        for slot in sorted(self.pending):
            if await self.state.has_epoch(slot):  # another process re-opened it
                self.pending.discard(slot)
                continue
            started = await self.state.note_recovery_start(slot, now)
            if now - started >= self.grace_seconds:
                ready[slot] = started
        locked = [slot for slot in ready if await self.state.lock(slot, LOCK_MS)]
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
                if await self.state.open_epoch(slot, new_epoch(RECOVERED, time.time())):
                    log.warning(
                        "numbering of slot %d re-opened after %.1fs (%s rule); counters reload from MySQL",
                        slot,
                        time.time() - ready[slot],
                        rule,
                    )
                await self.state.forget_recovery_start(slot)
                self.pending.discard(slot)
                opened.add(slot)
            return opened
        except OSError as exc:  # QueueCounter: the broker cannot be reached
            log.warning("numbering recovery cannot reach the broker: %s", exc)
            return opened
        finally:
            for slot in locked:
                with contextlib.suppress(RedisError):  # the lock expires by itself; never hide the real outcome
                    await self.state.unlock(slot)

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
        if not drained(counts):
            return False
        counted_at = time.time()
        after = await self._beats_after(counted_at, before)
        work_queues = [name for name, is_work_queue in self._queue_names() if is_work_queue]
        return after is not None and writers_idle_across(
            work_queues, since, counted_at, before, after, counts, time.time()
        )

    async def _beats_after(self, moment: float, before: Beats, timeout: float = 2.0) -> Beats | None:
        """The heartbeats, once every writer that reported before ``moment`` has reported again after it (None if
        one does not within ``timeout``: it is stuck, or gone — either way the rule cannot conclude now)."""
        deadline = time.monotonic() + timeout
        while True:
            beats = await self._beats()
            if not still_to_report(before, beats, moment, time.time()):
                return beats
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)

    async def _settled(self, lost: float) -> bool:
        """The precise rule for slots lost at ``lost`` (the latest of them): every message stamped before
        ``lost + grace`` is committed or dead-lettered, whatever the other slots' load (module docstring)."""
        cutoff = lost + self.grace_seconds
        since = await self.state.deferred_since()
        if since is None:  # the ledger itself was lost and no writer has restarted it yet
            return False
        evidence = evidence_time(cutoff, self.grace_seconds, float(since), self._longest_retry)
        if time.time() < evidence:
            return False
        first = await asyncio.to_thread(self._queue_counts)
        snapshots = []
        for wait in SETTLE_SECONDS:
            await asyncio.sleep(wait)
            snapshots.append(await self._beats())
        lowest = await self.state.lowest_deferred()
        if await self.state.deferred_since() != since:  # the ledger was lost meanwhile
            return False
        if lowest is not None and lowest < cutoff:
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
        return await self.state.heartbeats()

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
        return self.counter.count([name for name, _ in self._queue_names()])
