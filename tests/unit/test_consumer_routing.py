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
