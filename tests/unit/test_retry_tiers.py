"""Retry tiers a writer drains (chat_common.writing.retry_tiers), on a fake clock and the fake broker of the loop's
tests: when a held message is due, what happens when its way back fails, how lateness is measured and reported."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pika
import pika.exceptions
import pytest

from chat_api.adapters import queue_health
from chat_api.adapters.queue_health import QueueHealth, QueueSnapshot
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology
from chat_common.writing.batches import ATTEMPT_HEADER, DUE_AT_HEADER, PUBLISHED_AT_HEADER, stamp_header
from chat_common.writing.retry_tiers import HeldMessages, RetryDrainer, format_overdue_report, parse_overdue_report
from tests.unit.test_consumer_loop import QUEUE, FakeBroker

TIER_1S, TIER_30S = QUEUE.retry(1), QUEUE.retry(3)


def properties(due: float | None = None, stamp: float | None = None) -> pika.BasicProperties:
    headers = {ATTEMPT_HEADER: 1}
    if due is not None:
        headers[DUE_AT_HEADER] = stamp_header(due)
    if stamp is not None:
        headers[PUBLISHED_AT_HEADER] = stamp_header(stamp)
    return pika.BasicProperties(delivery_mode=2, headers=headers)


def test_a_message_is_due_when_its_header_says_earliest_first():
    held = HeldMessages()
    held.hold(TIER_30S, 30, 1, b"late", properties(due=1020.0), now=1000.0)
    held.hold(TIER_1S, 1, 2, b"soon", properties(due=1001.0), now=1000.0)
    assert held.due(1000.9) == []
    assert [m.body for m in held.due(1001.0)] == [b"soon"]
    assert [m.body for m in held.due(2000.0)] == [b"late"] and len(held) == 0


def test_a_redelivered_message_keeps_its_due_time_and_none_is_held_longer_than_its_tier_delay():
    held = HeldMessages()
    # Redelivered 25 s after it was sent to the 30 s tier: due in 5 s, not 30 s again.
    assert held.hold(TIER_30S, 30, 1, b"a", properties(due=1030.0), now=1025.0).due == 1030.0
    # Stamped by a writer whose clock is an hour ahead: held one delay at most.
    assert held.hold(TIER_30S, 30, 2, b"b", properties(due=4600.0), now=1000.0).due == 1030.0
    # From a TTL tier of an earlier version (no due time): one delay after it arrived.
    assert held.hold(TIER_1S, 1, 3, b"c", properties(), now=1000.0).due == 1001.0


def test_overdue_is_how_late_the_earliest_held_message_is_and_the_oldest_stamp_is_reported():
    held = HeldMessages()
    assert held.overdue(1000.0) == 0.0 and held.oldest_stamp() is None
    held.hold(TIER_1S, 1, 1, b"a", properties(due=990.0, stamp=900.0), now=995.0)
    held.hold(TIER_30S, 30, 2, b"b", properties(due=1010.0, stamp=800.0), now=995.0)
    assert held.overdue(1000.0) == 10.0 and held.oldest_stamp() == 800.0
    assert held.overdue(980.0) == 0.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def attached(clock: Clock) -> tuple[RetryDrainer, FakeBroker]:
    broker = FakeBroker([])
    drainer = RetryDrainer(QUEUE, prefetch=50, clock=clock)
    drainer.attach(broker)
    return drainer, broker


def deliver(broker: FakeBroker, tier: str, tag: int, body: bytes, props: pika.BasicProperties) -> None:
    broker.consumers[tier][1](None, SimpleNamespace(delivery_tag=tag, redelivered=False), props, body)


def test_release_returns_due_messages_to_the_work_queue_without_their_due_time_then_acknowledges_them():
    clock = Clock(1000.0)
    drainer, broker = attached(clock)
    sent = []

    def publish(_exchange, key, body, props, mandatory=False):
        sent.append((key, body, props.headers, props.delivery_mode, mandatory))
        broker.events.append(f"publish {key}")

    for channel in broker.confirming:
        channel.basic_publish = publish
    deliver(broker, TIER_1S, 5, b"m", properties(due=1001.0, stamp=900.0))
    assert drainer.release() == 0 and drainer.overdue == 0.0 and sent == []
    clock.now = 1003.5
    assert drainer.release() == 1
    headers = {ATTEMPT_HEADER: 1, PUBLISHED_AT_HEADER: 900_000}  # the API's stamp stays (numbering recovery)
    assert sent == [(QUEUE.name, b"m", headers, 2, True)]
    assert broker.events == [f"publish {QUEUE.name}", "ack 5"] and drainer.overdue == 2.5


def test_a_publish_that_is_not_confirmed_leaves_the_message_unacknowledged():
    clock = Clock(1000.0)
    drainer, broker = attached(clock)

    def refuse(*_args, **_kwargs):
        raise pika.exceptions.NackError([])

    for channel in broker.confirming:
        channel.basic_publish = refuse
    deliver(broker, TIER_1S, 5, b"m", properties(due=999.0))
    with pytest.raises(pika.exceptions.NackError):  # the loop reconnects; the broker redelivers it, still due
        drainer.release()
    assert broker.acked == []


def test_a_closed_tier_channel_makes_the_loop_reconnect():
    drainer, broker = attached(Clock(0.0))
    drainer.check()
    broker.consumers[TIER_1S][0].is_open = False
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        drainer.check()


def test_the_overdue_report_reads_back_and_a_malformed_one_reads_as_infinitely_old():
    assert parse_overdue_report(format_overdue_report(2.25, 1000.5).encode()) == (2.25, 1000.5)
    assert parse_overdue_report(b"garbage") == (0.0, 0.0)


def test_status_calls_tiers_overdue_past_the_margin_and_undrained_when_messages_have_no_consumer():
    assert QueueSnapshot(tiers={"t": (0, 2)}, overdue_seconds=29.0).retry_state(margin=30) == "ok"
    assert QueueSnapshot(tiers={"t": (0, 2)}, overdue_seconds=31.0).retry_state(margin=30) == "overdue"
    assert QueueSnapshot(tiers={"t": (4, 0)}).retry_state(margin=30) == "undrained"  # nothing would take them back
    assert QueueSnapshot(tiers={"t": (4, 1)}).retry_state(margin=30) == "ok"  # waiting behind a full prefetch
    assert (
        QueueSnapshot(dead={"d": 0}).dead_state() == "empty" and QueueSnapshot(dead={"d": 1}).dead_state() == "holding"
    )


class SlowBroker:
    """The broker side of QueueHealth: counts that take ``seconds`` to read (a slow link), or fail."""

    def __init__(self, seconds: float, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail

    def count_queues(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        time.sleep(self.seconds)
        if self.fail:
            raise OSError("broker unreachable")
        return dict.fromkeys(names, (0, 1))


class Reports:
    async def hgetall(self, _key: str) -> dict:
        return {}


class GatedBroker(SlowBroker):
    """Counts read only once the test opens ``gate``: a scan exactly as slow as the test needs, and no slower."""

    def __init__(self) -> None:
        super().__init__(0.0)
        self.gate = threading.Event()

    def count_queues(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        self.gate.wait(5)
        return super().count_queues(names)


async def test_a_slow_queue_scan_never_holds_status_up_and_shows_unknown_until_read(monkeypatch):
    monkeypatch.setattr(queue_health, "FIRST_READ_SECONDS", 0.05)
    broker = GatedBroker()
    health = QueueHealth(Reports(), RedisKeys("t:"), broker, Topology("t"), margin_seconds=30, cache_seconds=0)
    started = time.monotonic()
    assert await health.retry_tiers() == ("unknown", {})  # the first read is still going
    assert time.monotonic() - started < 0.25
    broker.gate.set()  # the scan ends
    deadline = time.monotonic() + 5
    while (answer := await health.retry_tiers())[0] == "unknown":
        assert time.monotonic() < deadline, "the finished scan never showed"
        await asyncio.sleep(0.01)
    state, detail = answer
    assert state == "ok" and detail["tiers"]
    assert (await health.dead_letters())[0] == "empty"


async def test_a_snapshot_too_old_is_not_shown_when_reads_keep_failing(monkeypatch):
    monkeypatch.setattr(queue_health, "FIRST_READ_SECONDS", 1.0)
    broker = SlowBroker(0.0)
    health = QueueHealth(Reports(), RedisKeys("t:"), broker, Topology("t"), margin_seconds=30, cache_seconds=0)
    assert (await health.retry_tiers())[0] == "ok"
    broker.fail = True
    monkeypatch.setattr(queue_health, "MAX_AGE", 0.0)
    await asyncio.sleep(0.05)
    assert (await health.retry_tiers())[0] == "unknown"
