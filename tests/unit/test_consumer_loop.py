"""The writers' consumer loop on a fake broker: what is acknowledged, retried, dead-lettered, and when.

The broker is a fake connection recording every ack, nack and publish; the "database" is a batch handler that
records the rows it wrote. Nothing here opens a socket.
"""

from __future__ import annotations

import json
import socket
import time
from types import SimpleNamespace

import pika
import pika.exceptions
import pytest

from chat_common.clients.broker import WRITER, BrokerNodes
from chat_common.wire import bundles
from chat_common.wire.topology import Topology
from chat_common.writing.batches import (
    ATTEMPT_HEADER,
    DUE_AT_HEADER,
    PUBLISHED_AT_HEADER,
    decode_batch,
    stamp_header,
)
from chat_common.writing.consumer import BatchConsumer, ConsumerHook


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a consumer unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


class Transient(Exception):
    """Stands for "the database is down"."""


class FakeChannel:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.is_open = True
        self.prefetch = 0

    def queue_declare(self, name, passive=False, **_):
        if passive and name not in self.broker.existing:  # what the broker does for a missing queue: 404, closed
            self.is_open = False
            raise pika.exceptions.ChannelClosedByBroker(404, f"NOT_FOUND - no queue '{name}'")
        self.broker.declared.append(name)
        self.broker.existing.add(name)
        return SimpleNamespace(method=SimpleNamespace(message_count=0, consumer_count=0))

    def basic_qos(self, prefetch_count):
        self.prefetch = prefetch_count

    def confirm_delivery(self):
        self.broker.confirming.append(self)

    def add_on_cancel_callback(self, callback):
        self.on_cancel = callback

    def basic_consume(self, queue, callback):
        self.broker.consumers[queue] = (self, callback)
        self.broker.subscriptions.append((queue, self.prefetch))
        return f"ctag-{queue}-{len(self.broker.subscriptions)}"

    def basic_cancel(self, consumer_tag):
        self.broker.cancelled.append(consumer_tag)

    def basic_publish(self, exchange, routing_key, body, properties, mandatory=False):
        assert self in self.broker.confirming and mandatory and properties.delivery_mode == 2
        self.broker.published.append((routing_key, body, properties.headers[ATTEMPT_HEADER]))
        self.broker.published_headers.append(properties.headers)
        self.broker.events.append(f"publish {routing_key}")

    def basic_nack(self, tag, requeue):
        self.broker.nacked.append((tag, requeue))

    def basic_ack(self, tag, multiple=False):
        self.broker.acked.append((tag, multiple))
        self.broker.events.append(f"ack {tag}")

    def close(self):
        self.is_open = False


class FakeBroker:
    """A connection handing over ``messages`` (body, attempt) of the work queue at the first poll, then asking the
    loop to stop; ``tiers`` (tier -> [(body, headers)]) are handed to the retry-tier consumers at the same time."""

    def __init__(self, messages: list[tuple[bytes, int]], tiers: dict | None = None) -> None:
        self.pending = list(messages)
        self.tier_pending = dict(tiers or {})
        self.declared, self.confirming, self.published, self.nacked, self.acked, self.slept = [], [], [], [], [], []
        self.published_headers: list[dict] = []
        self.events: list[str] = []
        self.subscriptions: list[tuple[str, int]] = []  # (queue, prefetch) of every basic_consume
        self.cancelled: list[str] = []  # consumer tags the loop cancelled itself
        self.existing: set[str] = set()
        self.consumers: dict[str, tuple[FakeChannel, object]] = {}
        self.consumer: BatchConsumer | None = None
        self.is_open = True

    @property
    def prefetch(self) -> int:
        """The work queue consumer's prefetch."""
        return self.consumers[QUEUE.name][0].prefetch

    @property
    def consuming(self):
        return self.consumers[QUEUE.name]

    def channel(self):
        return FakeChannel(self)

    def cancel(self, queue: str) -> None:
        """What the broker does when a consumed queue goes away or moves: Basic.Cancel to its channel."""
        channel, _ = self.consumers[queue]
        channel.on_cancel(object())

    def process_data_events(self, time_limit):
        if not self.pending and not self.tier_pending:
            self.consumer.should_stop = True
            return
        callback = self.consuming[1]
        for tag, (body, attempt) in enumerate(self.pending, start=1):
            # ``attempt``: the attempt header's value, or the message's whole headers (a bundle)
            headers = attempt if isinstance(attempt, dict) else {ATTEMPT_HEADER: attempt} if attempt else None
            callback(None, SimpleNamespace(delivery_tag=tag, redelivered=False), SimpleNamespace(headers=headers), body)
        self.pending = []
        tag = 1000
        for tier, messages in self.tier_pending.items():
            for body, headers in messages:
                tag += 1
                properties = pika.BasicProperties(delivery_mode=2, headers=headers)
                self.consumers[tier][1](None, SimpleNamespace(delivery_tag=tag, redelivered=False), properties, body)
        self.tier_pending = {}

    def sleep(self, seconds):
        self.slept.append(seconds)

    def close(self):
        self.is_open = False


class FakeDatabase:
    """A batch handler: rows are JSON ``{"id": n}``; ``{"poison": true}`` makes the whole batch fail; ids listed
    in ``not_yet`` are asked to be retried (their chat is not written yet)."""

    def __init__(self, not_yet=(), transient_failures=0) -> None:
        self.rows: list[int] = []
        self.calls: list[int] = []
        self.not_yet = set(not_yet)
        self.transient_failures = transient_failures

    def __call__(self, deliveries):
        self.calls.append(len(deliveries))
        if self.transient_failures:
            self.transient_failures -= 1
            raise Transient("database down")
        decoded, result = decode_batch(deliveries, json.loads, (ValueError,))
        if any(row.get("poison") for _, row in decoded):
            raise RuntimeError("constraint violated")
        for delivery, row in decoded:
            if row["id"] in self.not_yet:
                result.retry.append((delivery, "chat not written yet"))
            else:
                self.rows.append(row["id"])
        return result


def row(n: int) -> bytes:
    return json.dumps({"id": n}).encode()


POISON = b'{"id": 0, "poison": true}'
QUEUE = Topology("t", (1, 5, 30)).messages


def make_consumer(handler, connect, nodes: str = "amqp://unused", **options) -> BatchConsumer:
    """The loop of a writer of ``QUEUE`` that connects with ``connect`` to (fakes of) ``nodes``, without waiting
    for a batch to fill."""
    return BatchConsumer(
        broker=BrokerNodes(nodes, WRITER),
        queue=QUEUE,
        handler=handler,
        transient_errors=(Transient,),
        max_wait=0.0,
        connect=connect,
        **options,
    )


def run(messages, handler, *, max_attempts=40, hooks=(), batch_size=500, tiers=None, existing=()):
    """Run the loop over ``messages`` (and ``tiers``) on a fake broker where the queues ``existing`` exist already."""
    broker = FakeBroker([(m, 0) if isinstance(m, bytes) else m for m in messages], tiers)
    broker.existing.update(existing)
    consumer = make_consumer(
        handler, lambda _parameters: broker, batch_size=batch_size, max_attempts=max_attempts, hooks=hooks
    )
    broker.consumer = consumer
    consumer.run()
    return broker


def test_a_clean_batch_is_written_and_acknowledged_once_up_to_its_last_tag():
    db = FakeDatabase()
    broker = run([row(1), row(2), row(3)], db)
    assert db.rows == [1, 2, 3]
    assert broker.acked == [(3, True)] and not broker.nacked and not broker.published


def test_prefetch_starts_at_its_floor_and_the_topology_is_declared():
    broker = run([row(1)], FakeDatabase(), batch_size=500)
    assert broker.prefetch == 8  # 2 * batch_size / MAX_BUNDLE_UPSERTS until the messages show their size
    assert QUEUE.name in broker.declared and QUEUE.dead_letter in broker.declared


def test_an_undecodable_message_is_dead_lettered_and_the_rest_written():
    db = FakeDatabase()
    broker = run([row(1), b"not json", row(3)], db)
    assert db.rows == [1, 3]
    assert broker.nacked == [(2, False)]  # without requeue: into <queue>.dead
    assert broker.acked == [(3, True)]


def test_a_nacked_tag_is_never_acknowledged_again():
    broker = run([row(1), row(2), b"{"], FakeDatabase())
    assert broker.nacked == [(3, False)]
    assert broker.acked == [(2, True)]  # the highest tag still outstanding, not the nacked 3


def test_a_batch_of_only_poison_acknowledges_nothing():
    broker = run([b"x", b"y"], FakeDatabase())
    assert sorted(broker.nacked) == [(1, False), (2, False)] and broker.acked == []


def test_bisection_finds_the_poison_row_and_writes_the_rest():
    db = FakeDatabase()
    broker = run([row(1), row(2), row(3), POISON, row(5), row(6), row(7), row(8)], db)
    assert sorted(db.rows) == [1, 2, 3, 5, 6, 7, 8]
    assert broker.nacked == [(4, False)]
    assert broker.acked == [(8, True)]
    assert db.calls[0] == 8 and 1 in db.calls  # the whole batch first, the poison row alone at last


def test_a_message_whose_chat_is_not_written_yet_goes_to_the_first_retry_tier():
    db = FakeDatabase(not_yet={2})
    broker = run([row(1), row(2)], db)
    assert db.rows == [1]
    assert broker.published == [("t.messages.delay.1s", row(2), 1)]
    assert broker.acked == [(2, True)] and not broker.nacked  # published (confirmed) first, then acknowledged


def test_the_attempt_header_picks_the_next_tier():
    broker = run([(row(2), 1), (row(3), 2), (row(4), 9)], FakeDatabase(not_yet={2, 3, 4}))
    assert [(q, a) for q, _, a in broker.published] == [
        ("t.messages.delay.5s", 2),
        ("t.messages.delay.30s", 3),
        ("t.messages.delay.30s", 10),
    ]


def test_after_max_attempts_a_message_is_dead_lettered_not_retried():
    broker = run([(row(2), 3), (row(3), 2)], FakeDatabase(not_yet={2, 3}), max_attempts=3)
    assert broker.nacked == [(1, False)]
    assert [(q, a) for q, _, a in broker.published] == [("t.messages.delay.30s", 3)]
    assert broker.acked == [(2, True)]


def test_a_transient_failure_holds_the_batch_and_retries_it_with_growing_backoff():
    db = FakeDatabase(transient_failures=3)
    broker = run([row(1), row(2)], db)
    assert db.rows == [1, 2] and db.calls == [2, 2, 2, 2]  # never split: it is not the batch's fault
    assert broker.slept == [0.2, 0.4, 0.8]  # connection.sleep keeps the broker heartbeat alive
    assert broker.acked == [(2, True)] and not broker.nacked


def test_stopping_while_the_database_is_down_leaves_the_batch_to_the_broker():
    db = FakeDatabase(transient_failures=100)
    broker = FakeBroker([(row(1), 0)])
    consumer = make_consumer(db, lambda _parameters: broker)
    broker.consumer = consumer
    broker.sleep = lambda _s: setattr(consumer, "should_stop", True)  # SIGTERM arrives during the backoff
    consumer.run()
    assert not broker.acked and not broker.nacked and not broker.published and not db.rows
    assert not broker.is_open


class Recorder(ConsumerHook):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_message(self, queue, delivery):
        self.events.append(f"message {delivery.delivery_tag}")

    def on_batch_failed(self, queue, batch, exc):
        self.events.append("failed")

    def on_batch_applied(self, queue, batch, seconds):
        self.events.append(f"applied {len(batch)}")

    def on_batch_done(self, queue, routing):
        self.events.append(f"done {routing.applied}/{len(routing.retries)}/{len(routing.dead)}")

    def on_iteration(self, state):
        self.events.append(f"iteration held={state.held}")

    def on_stop(self, state):
        self.events.append(f"stop held={state.held}")


def test_hooks_are_called_at_their_named_points():
    hook = Recorder()
    run([row(1), b"?", row(3)], FakeDatabase(transient_failures=1, not_yet={3}), hooks=[hook])
    assert hook.events == [
        "message 1",
        "message 2",
        "message 3",
        "failed",
        "applied 3",
        "done 1/1/1",
        "iteration held=0",
        "iteration held=0",
        "stop held=0",
    ]


def test_several_broker_urls_a_dead_node_is_skipped_and_a_lost_node_is_tried_last():
    """RABBITMQ_URL lists the cluster's nodes: connect to the first that answers; after losing it, start after it."""
    tried: list[str] = []
    brokers = [FakeBroker([(row(1), 0)]), FakeBroker([(row(2), 0)])]

    def connect(parameters):
        tried.append(parameters.host)
        if parameters.host == "a":
            raise ConnectionRefusedError("node a is down")
        broker = brokers.pop(0)
        broker.consumer = consumer
        if brokers:  # the first connection is lost right after its batch: the broker's node crashed
            broker.process_data_events = lambda time_limit, b=broker: _deliver_then_crash(b, time_limit)
        return broker

    db = FakeDatabase()
    consumer = make_consumer(db, connect, "amqp://a, amqp://b,amqp://c")
    consumer._sleep = lambda _seconds: None  # no real backoff in a unit test
    consumer.run()
    assert tried == ["a", "b", "c"]  # a refused, b served then crashed, c next (not a again)
    assert db.rows == [1, 2]


def _deliver_then_crash(broker, time_limit):
    if broker.pending:
        FakeBroker.process_data_events(broker, time_limit)
        broker.consumer.should_stop = False
        return
    raise pika.exceptions.StreamLostError("node crashed")


@pytest.mark.parametrize("cancelled", [QUEUE.name, QUEUE.retry(1)])
def test_a_consumer_cancelled_by_the_broker_reconnects(cancelled):
    """The broker cancels a consumer whose queue's node went away: the loop must not wait for deliveries forever
    (nor leave a retry tier undrained)."""
    connections = []

    def connect(_parameters):
        broker = FakeBroker([])
        broker.consumer = consumer
        if not connections:
            broker.process_data_events = lambda time_limit, b=broker: b.cancel(cancelled)
        connections.append(broker)
        return broker

    consumer = make_consumer(FakeDatabase(), connect, "amqp://a")
    consumer._sleep = lambda _seconds: None
    consumer.run()
    assert len(connections) == 2 and not connections[0].is_open


# -- retry tiers: the loop drains its queue's tiers (chat_common.writing.retry_tiers)
# -----------------------------------
def tier_message(n: int, due: float, attempt: int = 1) -> tuple[bytes, dict]:
    return row(n), {ATTEMPT_HEADER: attempt, DUE_AT_HEADER: stamp_header(due)}


def test_a_due_tier_message_goes_back_to_the_work_queue_confirmed_before_it_is_acknowledged():
    broker = run([], FakeDatabase(), tiers={QUEUE.retry(1): [tier_message(7, due=1.0, attempt=1)]})
    assert broker.published == [(QUEUE.name, row(7), 1)]  # the attempt travels on; into the work queue
    assert broker.events == [f"publish {QUEUE.name}", "ack 1001"]  # the ack only after the confirmed publish
    assert broker.consumers[QUEUE.retry(1)][0].prefetch == 1000  # bounded: at most this many held per tier


def test_a_tier_message_not_yet_due_is_held_reported_and_left_to_the_broker_when_the_loop_stops():
    states = []

    class States(ConsumerHook):
        def on_iteration(self, state):
            states.append(state)

    later = time.time() + 3600
    broker = run([], FakeDatabase(), hooks=[States()], tiers={QUEUE.retry(30): [tier_message(8, due=later)]})
    assert broker.published == [] and broker.acked == []  # never acknowledged: redelivered with its due time
    assert states[0].held == 1  # counted as held by the writer (numbering recovery reads it)


def test_every_tier_is_consumed_and_an_old_ttl_tier_only_while_it_exists():
    broker = run([row(1)], FakeDatabase(), existing=[QUEUE.name + ".retry.5s"])  # left by an earlier version
    assert set(broker.consumers) == {QUEUE.name, *QUEUE.retry_queues, QUEUE.name + ".retry.5s"}


# -- bundles (several upserts in one message, chat_common.wire.bundles) ----------------------------------------------
def bundle(*bodies: bytes, first_stamp: float = 100.0, attempt: int = 0) -> tuple[bytes, dict]:
    """A bundle as the API's publisher sends it: each upsert stamped one second after the one before."""
    body, headers = bundles.pack(list(bodies), [first_stamp + i for i in range(len(bodies))])
    return body, ({**headers, ATTEMPT_HEADER: attempt} if attempt else headers)


class Seen(ConsumerHook):
    """Every delivery handed to the hooks, and the loop's last state."""

    def __init__(self) -> None:
        self.deliveries = []
        self.state = None

    def on_message(self, queue, delivery):
        self.deliveries.append(delivery)

    def on_stop(self, state):
        self.state = state


def test_a_bundle_is_one_delivery_per_upsert_each_with_its_stamp_and_the_messages_tag():
    db, seen = FakeDatabase(), Seen()
    broker = run([row(1), bundle(row(2), row(3), row(4)), row(5)], db, hooks=[seen])
    assert db.rows == [1, 2, 3, 4, 5]
    assert [(d.body, d.delivery_tag, d.parts, d.published_at) for d in seen.deliveries] == [
        (row(1), 1, 1, 0.0),
        (row(2), 2, 3, 100.0),
        (row(3), 2, 3, 101.0),
        (row(4), 2, 3, 102.0),
        (row(5), 3, 1, 0.0),
    ]
    assert broker.acked == [(3, True)] and not broker.nacked and not broker.published
    # Numbering recovery counts upserts, with their own stamps.
    assert (seen.state.firsts, seen.state.deliveries, seen.state.last) == (5, 5, 0.0)


def test_the_numbering_counts_take_the_last_upserts_own_stamp():
    seen = Seen()
    run([bundle(row(1), row(2), first_stamp=50.0)], FakeDatabase(), hooks=[seen])
    assert (seen.state.firsts, seen.state.deliveries, seen.state.last) == (2, 2, 51.0)


def test_a_poison_upsert_of_a_bundle_is_parked_alone_and_the_rest_committed():
    db = FakeDatabase()
    broker = run([row(1), bundle(row(2), POISON, row(4), first_stamp=70.0)], db)
    assert sorted(db.rows) == [1, 2, 4]
    assert broker.nacked == []  # the bundle's tag is never rejected: two of its upserts are committed
    assert [(q, body) for q, body, _ in broker.published] == [("t.messages.dead", POISON)]
    headers = broker.published_headers[0]
    assert headers[ATTEMPT_HEADER] == 0 and headers[PUBLISHED_AT_HEADER] == 71_000
    assert headers["x-dead-reason"] == "unappliable: RuntimeError: constraint violated"
    assert broker.events == ["publish t.messages.dead", "ack 2"]  # parked (confirmed) first, then acknowledged


def test_a_bundle_of_only_poison_is_parked_part_by_part_and_acknowledged():
    broker = run([bundle(b"x", b"y")], FakeDatabase())
    assert [(q, body) for q, body, _ in broker.published] == [("t.messages.dead", b"x"), ("t.messages.dead", b"y")]
    assert broker.acked == [(1, True)] and not broker.nacked


def test_a_bundle_part_whose_chat_is_not_written_goes_to_its_tier_alone_with_its_own_stamp():
    db = FakeDatabase(not_yet={3})
    broker = run([bundle(row(2), row(3), first_stamp=10.0, attempt=1)], db)
    assert db.rows == [2]
    assert broker.published == [("t.messages.delay.5s", row(3), 2)]  # a single message: no bundle headers
    assert broker.published_headers[0][PUBLISHED_AT_HEADER] == 11_000
    assert bundles.BUNDLE_HEADER not in broker.published_headers[0]
    assert broker.acked == [(1, True)] and not broker.nacked


@pytest.mark.parametrize(
    "headers",
    [
        {bundles.BUNDLE_HEADER: 3, bundles.STAMPS_HEADER: [1, 2, 3]},  # says 3, holds 2
        {bundles.BUNDLE_HEADER: 2, bundles.STAMPS_HEADER: [1]},  # a stamp missing
        {bundles.BUNDLE_HEADER: "2", bundles.STAMPS_HEADER: [1, 2]},  # not a count
    ],
)
def test_a_malformed_bundle_never_reaches_the_handler_and_is_rejected_whole(headers):
    db, hook = FakeDatabase(), Recorder()
    broker = run([row(1), (row(2) + b"\n" + row(3), headers), row(4)], db, hooks=[hook])
    assert db.rows == [1, 4] and db.calls == [2]
    assert broker.nacked == [(2, False)]  # into <queue>.dead by the broker, whole
    assert broker.acked == [(3, True)] and not broker.published
    assert "done 2/0/1" in hook.events


def test_a_malformed_bundle_that_reads_as_one_upsert_is_not_applied():
    """A truncated bundle whose body is one valid upsert must not be written as if it were all of it."""
    db = FakeDatabase()
    broker = run([(row(1), {bundles.BUNDLE_HEADER: 2, bundles.STAMPS_HEADER: [1, 2]})], db)
    assert db.rows == [] and broker.nacked == [(1, False)] and broker.acked == []


def test_prefetch_follows_the_upserts_per_message_within_its_bounds():
    big = [bundle(*(row(n) for n in range(i * 128, i * 128 + 128))) for i in range(12)]
    broker = run(big, FakeDatabase(), batch_size=500)
    # Bundles of the largest size: the floor, 2 * batch_size / MAX_BUNDLE_UPSERTS messages, never re-subscribed.
    assert [s for s in broker.subscriptions if s[0] == QUEUE.name] == [(QUEUE.name, 8)] and broker.cancelled == []
    assert broker.acked == [(12, True)]


class Drip(FakeBroker):
    """Hands over at most the consumer's prefetch of the pending messages (unacknowledged ones count) per poll."""

    def process_data_events(self, time_limit):
        channel, callback = self.consuming
        delivered = max(self.delivered, default=0)
        acked = max((tag for tag, _ in self.acked), default=0)
        room = channel.prefetch - (delivered - acked)
        if not self.pending and delivered == acked:
            self.consumer.should_stop = True
            return
        for body, headers in self.pending[:room]:
            tag = len(self.delivered) + 1
            self.delivered.append(tag)
            callback(None, SimpleNamespace(delivery_tag=tag, redelivered=False), SimpleNamespace(headers=headers), body)
        self.pending = self.pending[max(room, 0) :]


def drip(messages, batch_size):
    broker = Drip([(m, None) if isinstance(m, bytes) else m for m in messages])
    broker.delivered = []
    db = FakeDatabase()
    consumer = make_consumer(db, lambda _parameters: broker, batch_size=batch_size)
    consumer.max_wait = 60.0  # a batch is flushed when full or when it holds the whole window, never by time here
    broker.consumer = consumer
    consumer.run()
    return broker, db


def test_prefetch_grows_to_twice_the_batch_size_for_single_upserts_within_a_few_batches():
    broker, db = drip([row(n) for n in range(1, 301)], batch_size=50)
    work = [prefetch for queue, prefetch in broker.subscriptions if queue == QUEUE.name]
    # from 2 * 50 / 128 (rounded up) to 2 * 50 messages, within the factor-of-2 band that stops re-subscribing
    assert work[0] == 1 and 50 < work[-1] <= 100
    assert len(work) <= 7 and len(broker.cancelled) == len(work) - 1
    assert sorted(db.rows) == list(range(1, 301))


def test_prefetch_shrinks_when_bundles_follow_single_upserts_and_holds_about_twice_a_batch():
    singles = [row(n) for n in range(1, 201)]
    bundled = [bundle(*(row(n) for n in range(i, i + 25))) for i in range(1000, 3000, 25)]
    broker, db = drip(singles + bundled, batch_size=50)
    work = [prefetch for queue, prefetch in broker.subscriptions if queue == QUEUE.name]
    assert max(work) > 50 and work[-1] < 8  # about 2 * batch_size upserts: 100 / 25 = 4 messages (hysteresis: 2x)
    assert len(db.rows) == 200 + 2000


def test_a_re_subscription_starts_a_new_session_for_numbering_recovery():
    """Cancelling the consumer requeues what pika received and had not handed over: recovery must see a new session."""
    seen = Seen()
    big = [bundle(*(row(n) for n in range(i * 128, i * 128 + 128))) for i in range(3)]
    broker = Drip([(row(n), None) for n in range(1, 201)] + big)
    broker.delivered = []
    consumer = make_consumer(FakeDatabase(), lambda _parameters: broker, batch_size=50, hooks=[seen])
    consumer.max_wait = 60.0
    broker.consumer = consumer
    consumer.run()
    assert broker.cancelled and seen.state.session == 1 + len(broker.cancelled)
