"""Retry tiers, the attempt cap and bisection, as pure decisions (no broker, no database)."""

from __future__ import annotations

import socket

import pytest

from chat_common.wire.topology import Topology, WorkQueue
from chat_common.writing.batches import ATTEMPT_HEADER, DUE_AT_HEADER, PUBLISHED_AT_HEADER, BatchResult, Delivery
from chat_common.writing.poison import apply_isolating_poison
from chat_common.writing.routing import route, send


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a routing unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


QUEUE = WorkQueue("t.chats", (1, 5, 30))


def delivery(tag: int, attempt: int = 0, body: bytes = b"{}") -> Delivery:
    return Delivery(body, tag, False, attempt)


@pytest.mark.parametrize(
    ("attempt", "tier"),
    [
        (1, "t.chats.delay.1s"),
        (2, "t.chats.delay.5s"),
        (3, "t.chats.delay.30s"),
        (4, "t.chats.delay.30s"),
        (40, "t.chats.delay.30s"),
    ],
)
def test_retry_tiers_grow_then_stay_at_the_longest(attempt, tier):
    assert QUEUE.retry(attempt) == tier


def test_tiers_are_declared_without_ttl_or_dead_lettering_and_the_old_ttl_tiers_not_at_all():
    declared = {}

    class Channel:
        def queue_declare(self, name, durable, arguments=None):
            declared[name] = arguments

    Topology("t", (1, 5)).chats.declare(Channel())
    # Nothing leaves a tier but by a writer's confirmed publish (chat_common.writing.retry_tiers): no TTL, no
    # dead-lettering.
    assert declared["t.chats.delay.1s"] == declared["t.chats.delay.5s"] == {"x-queue-type": "quorum"}
    assert declared["t.chats"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "t.chats.dead",
        # Dead-lettering out of a quorum queue is at-most-once without these two: a rejected message could vanish.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert declared["t.chats.dead"] == {"x-queue-type": "quorum"}
    assert set(declared) == {"t.chats", "t.chats.dead", "t.chats.delay.1s", "t.chats.delay.5s"}
    # The TTL tiers of earlier versions: never declared (their arguments differ: 406), drained while they exist.
    assert Topology("t", (1, 5)).chats.legacy_retry_queues == {"t.chats.retry.1s": 1, "t.chats.retry.5s": 5}


def test_classic_queues_are_declared_with_exactly_the_arguments_of_earlier_versions():
    declared = {}

    class Channel:
        def queue_declare(self, name, durable, arguments=None):
            declared[name] = arguments

    Topology("t", (1, 5), "classic").chats.declare(Channel())
    assert declared == {
        "t.chats.dead": None,
        "t.chats": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "t.chats.dead"},
        "t.chats.delay.1s": None,
        "t.chats.delay.5s": None,
    }


def test_an_unknown_queue_type_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="quorum, classic"):
        Topology("t", (1,), "mirrored")


def test_route_sends_a_retry_to_the_tier_of_its_next_attempt_and_acks_the_batch():
    batch = [delivery(1), delivery(2, attempt=1)]
    routing = route(batch, BatchResult(retry=[(batch[1], "chat not written yet")]), QUEUE, max_attempts=40)
    assert [(r.delivery.delivery_tag, r.queue, r.attempt, r.delay) for r in routing.retries] == [
        (2, "t.chats.delay.5s", 2, 5)
    ]
    assert routing.ack_up_to == 2 and routing.dead == [] and routing.applied == 1


def test_route_dead_letters_a_retry_past_max_attempts_with_the_reason():
    batch = [delivery(1, attempt=40)]
    routing = route(batch, BatchResult(retry=[(batch[0], "chat not written yet")]), QUEUE, max_attempts=40)
    assert routing.retries == []
    assert routing.dead == [(batch[0], "gave up after 40 attempts: chat not written yet")]
    assert routing.ack_up_to is None  # its tag is nacked, so nothing is left to acknowledge
    assert routing.applied == 0  # counted once, as dead, not also as a retry


def test_route_never_acknowledges_a_dead_tag():
    batch = [delivery(1), delivery(2), delivery(3)]
    routing = route(batch, BatchResult(dead=[(batch[2], "invalid: x")]), QUEUE, max_attempts=40)
    assert routing.ack_up_to == 2


def fails_on(poison: set[int], calls: list[int], transient: type[Exception] | None = None):
    def handler(batch):
        calls.append(len(batch))
        if transient is not None:
            raise transient("down")
        if poison & {d.delivery_tag for d in batch}:
            raise ValueError("bad row")
        return BatchResult()

    return handler


def test_bisection_isolates_the_one_poison_message():
    batch = [delivery(t) for t in range(1, 9)]
    calls: list[int] = []
    result = apply_isolating_poison(fails_on({6}, calls), batch, (ConnectionError,))
    assert [(d.delivery_tag, reason) for d, reason in result.dead] == [(6, "unappliable: ValueError: bad row")]
    assert calls == [8, 4, 4, 2, 1, 1, 2]  # halves down to the poison row alone; every healthy half applied once


def test_bisection_isolates_several_poison_messages():
    batch = [delivery(t) for t in range(1, 8)]
    result = apply_isolating_poison(fails_on({1, 7}, []), batch, (ConnectionError,))
    assert sorted(d.delivery_tag for d, _ in result.dead) == [1, 7]


def test_bisection_keeps_the_handlers_retries():
    batch = [delivery(1), delivery(2)]

    def handler(part):
        if len(part) == 2:
            raise ValueError("bad")
        return BatchResult(retry=[(part[0], "later")]) if part[0].delivery_tag == 1 else BatchResult()

    result = apply_isolating_poison(handler, batch, (ConnectionError,))
    assert [(d.delivery_tag, r) for d, r in result.retry] == [(1, "later")] and result.dead == []


def test_a_transient_error_is_not_bisected_but_raised():
    calls: list[int] = []
    with pytest.raises(ConnectionError):
        apply_isolating_poison(fails_on(set(), calls, ConnectionError), [delivery(1), delivery(2)], (ConnectionError,))
    assert calls == [2]


def test_send_stamps_each_retry_due_its_delay_from_now_and_keeps_its_publish_stamp():
    published, acked = [], []

    class Channel:
        def basic_publish(self, exchange, routing_key, body, properties, mandatory=False):
            published.append((routing_key, properties.headers, properties.delivery_mode, mandatory))

        def basic_ack(self, tag, multiple=False):
            acked.append(tag)

    batch = [Delivery(b"x", 1, False, 1, 50.0), delivery(2)]
    routing = route(batch, BatchResult(retry=[(batch[0], "chat not written yet")]), QUEUE, max_attempts=40)
    send(routing, Channel(), Channel(), clock=lambda: 1000.0)
    headers = {ATTEMPT_HEADER: 2, PUBLISHED_AT_HEADER: 50_000, DUE_AT_HEADER: 1_005_000}  # due 5 s after now
    assert published == [("t.chats.delay.5s", headers, 2, True)] and acked == [2]  # confirmed first, then the ack


def part(tag: int, body: bytes, parts: int = 3, stamp: float = 0.0) -> Delivery:
    return Delivery(body, tag, False, 0, stamp, parts)


def test_route_parks_a_dead_part_of_a_bundle_and_acknowledges_its_tag():
    batch = [delivery(1), part(2, b"a"), part(2, b"b"), part(2, b"c")]
    routing = route(batch, BatchResult(dead=[(batch[2], "invalid: x")]), QUEUE, max_attempts=40)
    assert routing.parked == [(batch[2], "invalid: x")] and routing.rejected == []
    assert routing.ack_up_to == 2  # the bundle's other parts are committed: its tag is acknowledged, never nacked
    assert routing.applied == 3 and routing.dead_letter == "t.chats.dead"


def test_route_still_rejects_a_dead_single_message_beside_a_bundle():
    batch = [part(1, b"a", parts=2), part(1, b"b", parts=2), delivery(2)]
    routing = route(batch, BatchResult(dead=[(batch[2], "invalid: x")]), QUEUE, max_attempts=40)
    assert routing.rejected == [(batch[2], "invalid: x")] and routing.parked == []
    assert routing.ack_up_to == 1


def test_route_gives_up_on_a_bundle_part_past_max_attempts_by_parking_it():
    batch = [Delivery(b"a", 1, False, 40, 0.0, 2), Delivery(b"b", 1, False, 40, 0.0, 2)]
    routing = route(batch, BatchResult(retry=[(batch[0], "chat not written yet")]), QUEUE, max_attempts=40)
    assert [d.body for d, _ in routing.parked] == [b"a"] and routing.retries == []
    assert routing.ack_up_to == 1


class Recording:
    def __init__(self, log: list) -> None:
        self.log = log

    def basic_publish(self, exchange, routing_key, body, properties, mandatory=False):
        self.log.append(("publish", routing_key, body, properties.headers, properties.delivery_mode, mandatory))

    def basic_nack(self, tag, requeue):
        self.log.append(("nack", tag, requeue))

    def basic_ack(self, tag, multiple=False):
        self.log.append(("ack", tag, multiple))


def test_send_publishes_a_dead_part_alone_to_the_dead_letter_queue_confirmed_before_the_ack():
    on_channel, on_retry_channel = [], []
    batch = [part(7, b"a", stamp=12.5), part(7, b"b"), Delivery(b"c", 8, False, 3, 1.0, 2), part(8, b"d", parts=2)]
    result = BatchResult(dead=[(batch[0], "unappliable: ValueError: bad row")], retry=[(batch[2], "chat not written")])
    send(route(batch, result, QUEUE, max_attempts=40), Recording(on_channel), Recording(on_retry_channel), lambda: 0.0)
    parked_headers = {
        ATTEMPT_HEADER: 0,
        PUBLISHED_AT_HEADER: 12_500,
        "x-dead-reason": "unappliable: ValueError: bad row",
    }
    retry_headers = {ATTEMPT_HEADER: 4, PUBLISHED_AT_HEADER: 1_000, DUE_AT_HEADER: 30_000}
    assert on_retry_channel == [  # the confirm-mode channel: both are confirmed before anything is acknowledged
        ("publish", "t.chats.delay.30s", b"c", retry_headers, 2, True),
        ("publish", "t.chats.dead", b"a", parked_headers, 2, True),
    ]
    assert on_channel == [("ack", 8, True)]  # no nack: both bundles had parts committed
