"""Numbering recovery's rounds (chat_api.numbering.recovery.SlotRecovery) on fakes of its ports: which slots it
registers, when a round may run, that it re-opens under a ``recovered`` epoch, and what keeps a slot closed."""

from __future__ import annotations

import time

import pytest

from chat_api.adapters.recovery import slot_marker
from chat_api.numbering.epochs import RECOVERED
from chat_api.numbering.recovery import SlotRecovery
from chat_common.wire.keys import application_slot
from chat_common.wire.topology import Topology
from tests.unit.fakes import FakeQueueCounter, FakeRecoveryState, FakeSlotMarkers, FakeSlotOpenings

GRACE = 5.0
APP = 42
SLOT = application_slot(APP)


@pytest.fixture
def parts():
    openings = FakeSlotOpenings()
    markers = FakeSlotMarkers({slot_marker(SLOT)})  # the slot held numbers before: its missing epoch is a loss
    state = FakeRecoveryState(openings)
    counter = FakeQueueCounter()
    topology = Topology()
    recovery = SlotRecovery(state, counter, openings, markers, topology, GRACE)
    return recovery, state, counter, topology


async def test_a_lost_slot_is_registered_and_re_opens_only_after_the_grace_period(parts):
    recovery, state, _, _ = parts
    assert await recovery.attempt(APP) is False  # lost: left to the watchdog
    assert recovery.pending == {SLOT} and SLOT in state.started
    assert await recovery.recover() == set()  # the grace period has not passed
    state.started[SLOT] = time.time() - GRACE  # as if the loss was seen one grace period ago
    assert await recovery.recover() == {SLOT}  # nothing queued, no writer: the coarse rule holds at once
    epoch = state.openings.epochs[SLOT]
    assert epoch.split(":")[1] == RECOVERED
    assert recovery.pending == set() and SLOT not in state.started and state.locks == set()
    assert await recovery.attempt(APP) is True


async def test_a_queued_message_keeps_the_slot_closed_while_the_precise_rule_has_no_ledger(parts):
    recovery, state, counter, topology = parts
    await recovery.attempt(APP)
    state.started[SLOT] = time.time() - GRACE
    counter.ready[topology.messages.name] = 1  # the coarse rule fails
    state.since = None  # the deferral ledger was lost and not restarted: the precise rule cannot conclude
    assert await recovery.recover() == set()
    assert SLOT not in state.openings.epochs and recovery.pending == {SLOT} and state.locks == set()


async def test_an_unreachable_broker_leaves_the_slot_closed_and_the_lock_free(parts):
    recovery, state, counter, _ = parts
    await recovery.attempt(APP)
    state.started[SLOT] = time.time() - GRACE
    counter.fail("count", ConnectionError("broker down"))
    assert await recovery.recover() == set()
    assert SLOT not in state.openings.epochs and state.locks == set()


async def test_the_watchdog_sweep_finds_opened_slots_without_their_epoch(parts):
    recovery, _, _, _ = parts
    assert await recovery.closed_slots() == [SLOT]
    await recovery._sweep()
    assert recovery.pending == {SLOT}
