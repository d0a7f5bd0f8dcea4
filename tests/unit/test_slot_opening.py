"""Opening a numbering slot for its first use (chat_api.numbering.opening.SlotOpening), on fakes of Redis and the
MySQL markers: concurrent first requests are never refused, in one API process or several, whichever step each is
at; a slot that held numbers and lost its epoch is never opened here, however the steps interleave."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from chat_api.adapters.recovery import SLOTS_MARKER, slot_marker
from chat_api.model import NumberingStillOpening
from chat_api.numbering.epochs import FRESH
from chat_api.numbering.opening import SlotOpening
from tests.unit.fakes import FakeSlotMarkers, FakeSlotOpenings, Gate

SLOT = 7785


class Deployment:
    """One Redis (its slot epochs and openings) and one ``system_markers`` table, shared by the API processes."""

    def __init__(self) -> None:
        self.redis = FakeSlotOpenings()
        self.table: set[str] = set()

    def process(self, wait_seconds: float = 5.0) -> tuple[SlotOpening, FakeSlotMarkers]:
        """A new API process: its own marker cache and its own single-flight openings."""
        markers = FakeSlotMarkers(self.table)
        return SlotOpening(self.redis, markers, wait_seconds), markers


async def test_concurrent_first_requests_of_one_process_share_one_opening_and_none_is_refused():
    system = Deployment()
    opening, markers = system.process()
    markers.gates["open_slot"] = gate = Gate()  # the marker is written; the epoch is not there yet
    requests = [asyncio.create_task(opening.open(SLOT)) for _ in range(32)]
    await gate.reached.wait()
    gate.release()
    assert await asyncio.gather(*requests) == [True] * 32
    assert len(markers.called("slot_state")) == 1  # one run for all of them
    assert [epoch.split(":")[1] for _, epoch in system.redis.written] == [FRESH]
    assert {slot_marker(SLOT), SLOTS_MARKER} <= system.table


async def test_a_process_that_finds_the_marker_before_the_epoch_finishes_the_opening_instead_of_refusing():
    # The reported race: one process wrote the slot's marker and has not written the epoch yet; another reads the
    # marker ("this slot held numbers") and finds no epoch. That is an opening under way, not a lost cache.
    system = Deployment()
    first, first_markers = system.process()
    second, _ = system.process()
    first_markers.gates["open_slot"] = gate = Gate()
    opening = asyncio.create_task(first.open(SLOT))
    await gate.reached.wait()
    assert slot_marker(SLOT) in system.table and SLOT not in system.redis.epochs
    assert await second.open(SLOT)  # not "recovering after a cache restart"
    gate.release()
    assert await opening
    assert len(system.redis.written) == 1  # one epoch, whoever wrote it


async def test_an_opener_that_dies_after_the_marker_is_finished_by_another_process():
    system = Deployment()
    dying, dying_markers = system.process()
    other, _ = system.process()
    dying_markers.gates["open_slot"] = gate = Gate()
    opening = asyncio.create_task(dying._open(SLOT))  # the run itself, as a worker killed midway leaves it
    await gate.reached.wait()
    opening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await opening
    assert SLOT not in system.redis.epochs
    assert await other.open(SLOT)
    assert system.redis.epochs[SLOT].split(":")[1] == FRESH


async def test_a_slot_that_held_numbers_and_lost_its_epoch_is_a_loss_in_every_process():
    system = Deployment()
    opened_it, _ = system.process()
    assert await opened_it.open(SLOT)
    system.redis.lose_data()  # the shard came back empty
    new_process, _ = system.process()  # no cache: it reads the marker
    assert await asyncio.gather(opened_it.open(SLOT), new_process.open(SLOT), new_process.open(SLOT)) == [False] * 3
    assert SLOT not in system.redis.epochs and len(system.redis.written) == 1  # only the first opening wrote one


@pytest.mark.parametrize("loss_seen_first", [False, True], ids=["stale-read", "new-incarnation-meanwhile"])
async def test_a_never_numbered_read_taken_before_a_loss_cannot_open_the_slot_after_it(loss_seen_first):
    # A process reads "no marker", then stalls; meanwhile another opens the slot, numbers are handed out, and the
    # shard loses its data (and, in the second case, a new opening begins after the loss, which another process
    # finds a loss). The stale read must not open the slot: the opening it read under ended with the shard's data.
    system = Deployment()
    stalled, stalled_markers = system.process()
    other, _ = system.process()
    stalled_markers.gates["slot_state"] = gate = Gate()
    late = asyncio.create_task(stalled.open(SLOT))
    await gate.reached.wait()  # it read NEW
    assert await other.open(SLOT)
    system.redis.lose_data()
    if loss_seen_first:
        assert await other.open(SLOT) is False
    stalled_markers.gates.pop("slot_state")
    gate.release()
    assert await late is False  # looked again: the marker is there, so the missing epoch is a loss
    assert SLOT not in system.redis.epochs


async def test_first_requests_wait_at_most_the_bound_then_hear_still_opening_and_the_opening_goes_on():
    system = Deployment()
    opening, markers = system.process(wait_seconds=0.05)
    markers.gates["open_slot"] = gate = Gate()  # MySQL slow to write the marker
    with pytest.raises(NumberingStillOpening):
        await opening.open(SLOT)
    with pytest.raises(NumberingStillOpening):
        await opening.open(SLOT)
    assert len(markers.called("slot_state")) == 1  # both waited on the same run, which was not cancelled
    gate.release()
    assert await opening.open(SLOT)


async def test_a_failure_reaches_every_waiter_and_the_next_request_starts_again():
    system = Deployment()
    opening, markers = system.process()
    markers.fail("slot_state", ConnectionError("MySQL gone"))
    results = await asyncio.gather(*(opening.open(SLOT) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    assert await opening.open(SLOT)


async def test_a_system_older_than_slot_markers_opens_with_the_previous_epoch_only_while_redis_still_has_it():
    system = Deployment()
    system.table.add("numbering_opened")  # opened before per-slot markers existed
    system.redis.legacy = "old:fresh:1"
    opening, _ = system.process()
    assert await opening.open(SLOT)
    assert system.redis.epochs[SLOT] == "old:fresh:1" and SLOTS_MARKER not in system.table
    system.redis.lose_data()  # the previous version's epoch is gone too: any slot may have held numbers
    fresh_process, _ = system.process()
    assert await fresh_process.open(SLOT + 1) is False
