"""The precise numbering-recovery rule's parts, on fakes: publish stamps through the writers' loop and retry tiers,
the heartbeat fields, the deferral ledger, and the per-queue condition (chat_api.numbering.reopening.queue_settled)."""

from __future__ import annotations

from types import SimpleNamespace

from chat_api.numbering.reopening import queue_settled
from chat_common.clients.broker import WRITER, BrokerNodes
from chat_common.wire.heartbeats import WriterHeartbeat, format_heartbeat, parse_heartbeat
from chat_common.writing.batches import ATTEMPT_HEADER, DUE_AT_HEADER, PUBLISHED_AT_HEADER, Delivery, stamp_header
from chat_common.writing.consumer import BatchConsumer, ConsumerHook
from chat_common.writing.consumer_hooks import DeferralLedger, deferral_id
from chat_common.writing.routing import Retry, Routing
from tests.unit.test_consumer_loop import QUEUE, FakeBroker, FakeChannel, FakeDatabase, row

Q = "t.messages"
C, E = 100.0, 104.0  # cutoff and evidence time


class StampingBroker(FakeBroker):
    """Hands over (body, attempt, stamp, redelivered) messages with the API's publish stamp header."""

    def process_data_events(self, time_limit):
        if not self.pending:
            self.consumer.should_stop = True
            return
        callback = self.consuming[1]
        for tag, (body, attempt, stamp, redelivered) in enumerate(self.pending, start=1):
            headers = {ATTEMPT_HEADER: attempt, PUBLISHED_AT_HEADER: stamp_header(stamp)}
            method = SimpleNamespace(delivery_tag=tag, redelivered=redelivered)
            callback(None, method, SimpleNamespace(headers=headers), body)
        self.pending = []


def consume(messages, handler, hooks, transient=()):
    """Run the real consumer loop over ``messages`` (body, attempt, stamp, redelivered) on the fake broker."""
    broker = StampingBroker([])
    broker.pending = list(messages)
    consumer = BatchConsumer(
        broker=BrokerNodes("amqp://unused", WRITER),
        queue=QUEUE,
        handler=handler,
        transient_errors=transient,
        max_wait=0.0,
        hooks=hooks,
        connect=lambda _parameters: broker,
    )
    broker.consumer = consumer
    consumer.run()
    return broker


def test_the_stamp_is_read_reported_and_kept_on_the_retry_tier_and_the_ledger_runs_before_any_ack(monkeypatch):
    sent: list[tuple[str, object]] = []
    monkeypatch.setattr(
        FakeChannel, "basic_publish", lambda self, _x, key, body, props, mandatory=False: sent.append((key, props))
    )
    ledger, states = [], []

    class States(ConsumerHook):
        def on_iteration(self, state):
            states.append(state)

    def defer(entries):
        ledger.append(("defer", entries, len(sent)))

    def settle(names):
        ledger.append(("settle", names, len(sent)))

    messages = [(row(1), 0, 50.0, False), (row(2), 0, 60.0, False), (row(3), 2, 10.0, False)]
    broker = consume(messages, FakeDatabase(not_yet={2}), [DeferralLedger(defer, settle), States()])
    ((key, props),) = sent
    assert key == "t.messages.delay.1s"
    assert {k: v for k, v in props.headers.items() if k != DUE_AT_HEADER} == {
        ATTEMPT_HEADER: 1,
        PUBLISHED_AT_HEADER: 60000,
    }
    d2 = Delivery(row(2), 2, False, 0, 60.0)
    d3 = Delivery(row(3), 3, False, 2, 10.0)
    # Deferred before it is published to the tier; the retried message committed now is settled; no ack before.
    assert ledger == [("defer", {deferral_id(d2): 60.0}, 0), ("settle", [deferral_id(d3)], 0)]
    assert broker.acked == [(3, True)]
    last = states[-1]
    # 3 was a retry; session 2: one connection, and one re-subscription as the prefetch grew from its floor
    assert (last.held, last.oldest, last.last, last.firsts, last.session) == (0, None, 60.0, 2, 2)


def test_the_loop_reports_the_oldest_stamp_it_holds():
    consumer = BatchConsumer(
        broker=BrokerNodes("amqp://unused", WRITER), queue=QUEUE, handler=FakeDatabase(), transient_errors=()
    )
    consumer._buffer = [Delivery(b"a", 1, False, 0, 70.0), Delivery(b"b", 2, True, 0, 40.0)]
    assert consumer._state(None).oldest == 40.0  # what a writer holding these reports in its heartbeat
    # A retry-tier message it holds until due counts too: it may carry a number from before a loss.
    props = SimpleNamespace(headers={PUBLISHED_AT_HEADER: stamp_header(30.0)})
    consumer.drainer.held.hold(QUEUE.retry(1), 1, 9, b"c", props, now=100.0)
    state = consumer._state(None)
    assert (state.oldest, state.held) == (30.0, 3)


def test_a_failing_ledger_holds_the_batch_unacknowledged_until_it_succeeds():
    calls = []

    def defer(entries):
        calls.append(entries)
        if len(calls) == 1:
            raise ConnectionError("redis down")

    broker = consume(
        [(row(2), 0, 60.0, False)],
        FakeDatabase(not_yet={2}),
        [DeferralLedger(defer, lambda _n: None)],
        transient=(ConnectionError,),
    )
    assert len(calls) == 2 and broker.slept == [0.2]  # retried after a backoff; published and acknowledged once
    assert broker.published == [("t.messages.delay.1s", row(2), 1)] and broker.acked == [(1, True)]


def test_the_ledger_defers_with_the_lowest_stamp_and_never_settles_what_it_defers_again():
    entries, settled = [], []
    ledger = DeferralLedger(entries.append, settled.append)
    again = Delivery(b"x", 1, False, 1, 30.0)
    redelivered = Delivery(b"y", 2, True, 0, 20.0)
    fresh = Delivery(b"z", 3, False, 0, 40.0)
    routing = Routing(3, retries=[Retry(again, "q.retry.1s", 2)])
    ledger.on_batch_routed(None, [again, redelivered, fresh], routing)
    assert entries == [{deferral_id(again): 30.0}]
    assert settled == [[deferral_id(redelivered)]]  # a redelivered one may have been deferred before a crash


def test_heartbeats_carry_the_recovery_fields_and_old_ones_still_read():
    raw = format_heartbeat(3, 1000.5, oldest=99.25, last=120.5, firsts=7, session=2, beat=11)
    assert parse_heartbeat(raw.encode()) == WriterHeartbeat(3, 1000.5, 99.25, 120.5, 7, 2, 11)
    assert parse_heartbeat(format_heartbeat(0, 1000.0, last=1.0)).oldest is None
    assert parse_heartbeat(b"4:1000.000") == WriterHeartbeat(4, 1000.0)  # a writer of the previous version


def beat(n, *, oldest=None, last=0.0, firsts=0, session=1):
    return WriterHeartbeat(1, 0.0, oldest, last, firsts, session, n)


def snapshots(*rows):
    """rows: per writer, its four heartbeats."""
    return tuple({f"{Q}|w{i}": r[k] for i, r in enumerate(rows)} for k in range(4))


BUSY = (beat(1, firsts=5), beat(2, firsts=5), beat(3, last=E + 1, firsts=9), beat(5, oldest=E, firsts=12))


def test_a_queue_under_load_is_settled_by_a_new_delivery_and_nothing_old_held():
    counts = {Q: (40, 1)}  # never empty: another tenant's load
    assert queue_settled(Q, counts, counts, snapshots(BUSY), C, E)


def test_a_held_message_from_before_the_cutoff_keeps_it_closed():
    held = (*BUSY[:3], beat(5, oldest=C - 1, firsts=12))
    assert not queue_settled(Q, {Q: (0, 1)}, {Q: (0, 1)}, snapshots(held), C, E)


def test_without_a_new_delivery_stamped_after_the_evidence_time_a_busy_queue_is_not_settled():
    counts = {Q: (40, 1)}
    old_evidence = (*BUSY[:2], beat(3, last=E - 1, firsts=9), BUSY[3])
    assert not queue_settled(Q, counts, counts, snapshots(old_evidence), C, E)
    received_before_h2 = (BUSY[0], beat(2, last=E + 1, firsts=9), beat(3, last=E + 1, firsts=9), BUSY[3])
    assert not queue_settled(Q, counts, counts, snapshots(received_before_h2), C, E)
    assert queue_settled(Q, {Q: (0, 1)}, counts, snapshots(old_evidence), C, E)  # an empty queue at Q1 is enough


def test_consumer_churn_a_reconnect_or_a_writer_not_beating_keeps_it_closed():
    counts = {Q: (40, 1)}
    assert not queue_settled(Q, {Q: (40, 2)}, counts, snapshots(BUSY), C, E)  # a consumer that does not report
    assert not queue_settled(Q, counts, {Q: (40, 2)}, snapshots(BUSY), C, E)  # one came during the round
    reconnected = (*BUSY[:3], beat(5, oldest=E, firsts=12, session=2))
    assert not queue_settled(Q, counts, counts, snapshots(reconnected), C, E)
    slow = (*BUSY[:3], beat(4, oldest=E, firsts=12))  # H4 not a full beat interval after the H3 read
    assert not queue_settled(Q, counts, counts, snapshots(slow), C, E)
    assert queue_settled(Q, {Q: (0, 0)}, {Q: (0, 0)}, snapshots(), C, E)  # no writer, nothing queued


def test_a_retried_message_no_writer_holds_keeps_it_closed():
    """(f): ready in a tier, it may be from before a loss of the ledger, and nobody would report it."""
    tier = f"{Q}.delay.5s"
    counts = {Q: (0, 1), tier: (0, 1)}
    assert queue_settled(Q, counts, counts, snapshots(BUSY), C, E, tiers=(tier,))
    waiting = {**counts, tier: (1, 1)}
    assert not queue_settled(Q, waiting, counts, snapshots(BUSY), C, E, tiers=(tier,))
