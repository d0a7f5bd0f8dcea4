"""Retry tiers, the attempt cap and bisection, as pure decisions (no broker, no database)."""

from __future__ import annotations

import socket

import pytest

from chat_common.batches import BatchResult, Delivery
from chat_common.poison import apply_isolating_poison
from chat_common.routing import route
from chat_common.topology import Topology, WorkQueue


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
        (1, "t.chats.retry.1s"),
        (2, "t.chats.retry.5s"),
        (3, "t.chats.retry.30s"),
        (4, "t.chats.retry.30s"),
        (40, "t.chats.retry.30s"),
    ],
)
def test_retry_tiers_grow_then_stay_at_the_longest(attempt, tier):
    assert QUEUE.retry(attempt) == tier


def test_every_tier_is_declared_with_its_ttl_and_dead_letters_back_to_the_work_queue():
    declared = {}

    class Channel:
        def queue_declare(self, name, durable, arguments=None):
            declared[name] = arguments

    Topology("t", (1, 5)).chats.declare(Channel())
    assert declared["t.chats.retry.5s"] == {
        "x-queue-type": "quorum",
        "x-message-ttl": 5000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "t.chats",
        # Dead-lettering out of a quorum queue is at-most-once without these two: a retry could vanish.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert declared["t.chats"] == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "t.chats.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert declared["t.chats.dead"] == {"x-queue-type": "quorum"}


def test_classic_queues_are_declared_with_exactly_the_arguments_of_earlier_versions():
    declared = {}

    class Channel:
        def queue_declare(self, name, durable, arguments=None):
            declared[name] = arguments

    Topology("t", (1, 5), "classic").chats.declare(Channel())
    back_to_work = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "t.chats"}
    assert declared == {
        "t.chats.dead": None,
        "t.chats": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "t.chats.dead"},
        "t.chats.retry.1s": {"x-message-ttl": 1000, **back_to_work},
        "t.chats.retry.5s": {"x-message-ttl": 5000, **back_to_work},
    }


def test_an_unknown_queue_type_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="quorum, classic"):
        Topology("t", (1,), "mirrored")


def test_route_sends_a_retry_to_the_tier_of_its_next_attempt_and_acks_the_batch():
    batch = [delivery(1), delivery(2, attempt=1)]
    routing = route(batch, BatchResult(retry=[(batch[1], "chat not written yet")]), QUEUE, max_attempts=40)
    assert [(r.delivery.delivery_tag, r.queue, r.attempt) for r in routing.retries] == [(2, "t.chats.retry.5s", 2)]
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
