"""Opening a numbering slot for its first use, without refusing anyone, and telling it from a slot that lost data.

Pure over two ports (:class:`chat_api.ports.SlotOpenings`, Redis; :class:`chat_api.ports.SlotMarkers`, MySQL).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from chat_api.model import NumberingStillOpening
from chat_api.numbering.epochs import FRESH, new_epoch
from chat_api.ports import SlotMarkers, SlotOpenings

log = logging.getLogger(__name__)

# A slot's durable state (SlotMarkers.slot_state).
# upgrade-only: remove after release 0.2 (LEGACY: a system that opened under 0.1.x's single epoch)
NEW, OPENED, LEGACY = "new", "opened", "legacy"

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
    slot that held numbers re-opens only through :class:`chat_api.numbering.recovery.SlotRecovery`'s rules.

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
