"""Per-slot numbering epochs against the real Redis, MariaDB and RabbitMQ: a slot that lost its data recovers
alone while the others keep numbering; a slot never used opens at once, and concurrent first requests in several
processes all see it open; numbers wait for replicas (WAIT).

The precise recovery rule (chat_api.numbering.reopening): the API stamps each publish; a lost slot re-opens under
another tenant's continuous load (real API and writers), and stays closed while a writer holds, or a retry tier
keeps, a message stamped before the loss."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pika
import pytest
import pytest_asyncio
import requests
from sqlalchemy import text

from chat_api.adapters import numbering as codes
from chat_api.adapters.database import Database
from chat_api.adapters.numbering import Numbering
from chat_api.adapters.pipelining import NotReplicated
from chat_api.adapters.publisher import ConfirmingPublisher, PublishError
from chat_api.adapters.recovery import (
    NUMBERING_OPENED,
    NumberingMarker,
    NumberingRecovery,
    RedisSlotOpenings,
    slot_marker,
)
from chat_api.numbering.epochs import FRESH, RECOVERED, keys_may_be_forgotten
from chat_common.clients.broker import API, BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import async_client, sync_client
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.heartbeats import format_heartbeat
from chat_common.wire.keys import RedisKeys, application_slot
from chat_common.wire.topology import Topology
from chat_common.writing.batches import PUBLISHED_AT_HEADER, read_stamp, stamp_header
from chat_devtools.http import wait_for
from chat_devtools.load.clients import MessageLoad
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT

GRACE = 0.5


def _apps_in_distinct_slots(count: int) -> list[int]:
    found: dict[int, int] = {}
    for app in range(1, 1000):
        found.setdefault(application_slot(app), app)
        if len(found) == count:
            break
    return list(found.values())


@pytest_asyncio.fixture
async def parts(fresh_namespace):
    settings = fresh_namespace.settings
    client = async_client(settings.redis_url, socket_timeout=2)
    db = Database(settings.database_url, pool_size=2)
    keys = RedisKeys(settings.redis_key_prefix)
    recovery = NumberingRecovery(
        client, keys, BrokerNodes.from_settings(settings), Topology.from_settings(settings), GRACE, NumberingMarker(db)
    )
    yield recovery, client, keys, db
    await client.aclose()
    await db.close()


async def _markers(db: Database) -> set[str]:
    return {row[0] for row in await db.rows(text("SELECT name FROM system_markers"))}


async def test_a_lost_slot_recovers_alone_and_a_new_slot_opens_at_once(parts):
    recovery, client, keys, db = parts
    lost, other, later = _apps_in_distinct_slots(3)
    assert await recovery.attempt(lost) and await recovery.attempt(other)  # a new system: open at once
    assert (await client.get(keys.epoch_of(lost))).decode().split(":")[1] == FRESH
    assert slot_marker(application_slot(lost)) in await _markers(db)  # durable before the first number
    assert NUMBERING_OPENED in await _markers(db)
    await client.delete(keys.epoch_of(lost))  # the shard holding this slot lost its data
    assert not await recovery.attempt(lost)  # it held numbers: wait for the recovery conditions
    assert await recovery.attempt(other)  # the other slot never pauses
    assert await recovery.attempt(later)  # a slot used for the first time on an old system opens at once
    assert await recovery.closed_slots() == [application_slot(lost)]
    assert await recovery.recover() == set()  # within the grace period
    await asyncio.sleep(GRACE + 0.1)
    assert await recovery.recover() == {application_slot(lost)}  # no queue, no writer holds anything
    epoch = (await client.get(keys.epoch_of(lost))).decode()
    assert epoch.split(":")[1] == RECOVERED and await recovery.closed_slots() == []
    assert keys_may_be_forgotten(epoch, float(epoch.split(":")[2]) + 1)  # idempotency falls back to MySQL there
    assert not keys_may_be_forgotten((await client.get(keys.epoch_of(other))).decode(), 0)


async def test_concurrent_first_attempts_in_several_processes_all_open_the_slot_once(parts, fresh_namespace):
    recovery, client, keys, _ = parts
    settings = fresh_namespace.settings
    other_db = Database(settings.database_url, pool_size=4)  # a second API process: its own pool and marker cache
    other = NumberingRecovery(client, keys, settings.rabbitmq_url, recovery.topology, GRACE, NumberingMarker(other_db))
    try:
        (app,) = _apps_in_distinct_slots(1)
        attempts = [process.attempt(app) for _ in range(32) for process in (recovery, other)]
        assert await asyncio.gather(*attempts) == [True] * 64  # never "recovering": nothing was ever numbered
        assert (await client.get(keys.epoch_of(app))).decode().split(":")[1] == FRESH
        assert not await client.exists(keys.slot_opening(application_slot(app)))  # ended with the epoch's arrival
        assert recovery.pending == other.pending == set()
    finally:
        await other_db.close()


async def test_the_opening_scripts_keep_the_contract_the_unit_tests_fake(parts):
    _, client, keys, _ = parts
    openings = RedisSlotOpenings(client, keys)
    slot = 4242
    assert await openings.begin(slot, "a") == "a|"
    assert await openings.begin(slot, "b") == "a|"  # one opening at a time: the first incarnation stays
    assert await openings.promote(slot, "b", "e0") is None  # not the current incarnation
    assert await openings.promote(slot, "a", "") == "a|"  # only read
    assert await openings.promote(slot, "a", "e1") == "a|e1"
    assert await openings.promote(slot, "a", "e2") == "a|e1"  # the first promotion wins
    assert await openings.complete(slot, "a|e2") == 0
    assert await openings.complete(slot, "a|e1") == 2
    assert await client.get(keys.slot_epoch(slot)) == b"e1" and not await client.exists(keys.slot_opening(slot))
    assert await openings.complete(slot, "a|e1") == 1  # a latecomer: the epoch is there
    assert await openings.begin(slot, "c") is None
    await client.delete(keys.slot_epoch(slot))  # the shard lost its data
    assert await openings.begin(slot, "c") == "c|"
    assert await openings.promote(slot, "a", "e3") is None  # an incarnation from before the loss is over
    await client.set(keys.slot_epoch(slot), "r")  # re-opened by the recovery meanwhile
    assert await openings.begin(slot, "d") is None and not await client.exists(keys.slot_opening(slot))
    assert await openings.legacy_epoch() is None


class BeatingWriter:
    """A writer's heartbeat, written every 50 ms like a real writer's loop, with what the test says it holds and
    how many deliveries it has received."""

    def __init__(self, client, keys, queue: str) -> None:
        self.client, self.field = client, f"{queue}|w1"
        self.keys = keys
        self.held = 0
        self.deliveries = 0
        self.receiving = False  # True: one more delivery before every heartbeat (a message passing through it)
        self._task: asyncio.Task | None = None

    async def _beat(self) -> None:
        beat = 0
        while True:
            beat += 1
            self.deliveries += self.receiving
            value = format_heartbeat(self.held, time.time(), None, 0.0, 0, 1, beat, self.deliveries)
            await self.client.hset(self.keys.writer_heartbeats, self.field, value)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> BeatingWriter:
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0.1)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _lost_after_grace(recovery, client, keys) -> int:
    (app,) = _apps_in_distinct_slots(1)
    assert await recovery.attempt(app)
    await client.delete(keys.epoch_of(app))
    assert not await recovery.attempt(app)
    await asyncio.sleep(GRACE + 0.1)
    return app


@contextlib.contextmanager
def _a_channel_on(recovery):
    """A channel of a blocking connection to the broker, the topology declared; the connection closed afterwards."""
    connection = recovery.broker.connect_blocking()
    try:
        channel = connection.channel()
        recovery.topology.declare(channel)
        yield channel
    finally:
        connection.close()


def _publish_numbered_at(channel, queue: str, stamp: float) -> None:
    """A message in ``queue`` as the API publishes one it numbered at ``stamp``."""
    props = pika.BasicProperties(delivery_mode=2, headers={PUBLISHED_AT_HEADER: stamp_header(stamp)})
    channel.basic_publish("", queue, b"{}", props)


@contextlib.contextmanager
def _a_consumer_on(recovery, queue: str):
    """A consumer of ``queue`` the broker knows of (the writer whose heartbeat the test writes)."""
    with _a_channel_on(recovery) as channel:
        channel.basic_consume(queue, lambda *_: None)
        yield


async def test_a_busy_writer_holds_the_recovery_of_a_lost_slot(parts):
    recovery, client, keys, _ = parts
    app = await _lost_after_grace(recovery, client, keys)
    queue = recovery.topology.chats.name
    with _a_consumer_on(recovery, queue):
        async with BeatingWriter(client, keys, queue) as writer:
            writer.held = 3
            assert await recovery.recover() == set()  # it still holds 3 messages that may carry the slot's numbers
            writer.held = 0
            await asyncio.sleep(0.1)
            assert await recovery.recover() == {application_slot(app)}


async def test_a_message_passing_through_a_writer_around_the_count_holds_the_recovery(parts):
    """Every queue empty at the count and the writer's heartbeats saying it holds nothing — yet it received a
    delivery between them (a retried message moving from a tier to the writer, say): not drained. Without the
    delivery counter the two snapshots agree on "nothing anywhere" while the message is in flight."""
    recovery, client, keys, _ = parts
    app = await _lost_after_grace(recovery, client, keys)
    queue = recovery.topology.chats.name
    with _a_consumer_on(recovery, queue):
        async with BeatingWriter(client, keys, queue) as writer:
            writer.receiving = True
            assert await recovery.recover() == set()
            writer.receiving = False
            await asyncio.sleep(0.1)
            assert await recovery.recover() == {application_slot(app)}


async def test_a_system_older_than_slot_markers_keeps_its_single_epoch(parts):
    recovery, client, keys, db = parts
    first, second = _apps_in_distinct_slots(2)
    await db.execute(text(f"INSERT INTO system_markers (name) VALUES ('{NUMBERING_OPENED}')"))
    await client.set(keys.epoch, "old:fresh:1")  # the previous version's epoch: Redis lost nothing
    assert await recovery.attempt(first)
    assert await client.get(keys.epoch_of(first)) == b"old:fresh:1"  # its meaning carried over
    await client.delete(keys.epoch)  # now Redis lost its data: any slot may have held numbers
    assert not await recovery.attempt(second)


async def test_numbers_wait_for_replicas_and_fail_without_them(parts):
    _, client, keys, _ = parts
    numbering = Numbering(client, keys, timeout=2, replicas=1, replica_timeout_ms=50)
    await client.set(keys.epoch_of(5), "e")
    await client.hset(keys.numbers(5), mapping={"id": 5, "chats": 0})
    with pytest.raises(NotReplicated):  # the shared Redis has no replica: nothing may be answered
        await numbering.new_chat(5)
    plain = Numbering(client, keys, timeout=2)
    assert (await plain.new_chat(5)).status == codes.OK  # REDIS_REPLICAS_TO_ACK=0: no WAIT at all


# -- The precise rule: a lost slot re-opens under other tenants' load, never before its messages are committed ----


class Beating:
    """Writes a writer's heartbeat every 0.1 s, as a real writer's loop would, holding what it is told."""

    def __init__(self, client, keys: RedisKeys, field: str) -> None:
        self.client, self.keys, self.field = client, keys, field
        self.oldest: float | None = None
        self.held = 0
        self.beat = 0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.beat += 1
            value = format_heartbeat(self.held, time.time(), self.oldest, 0.0, 0, 1, self.beat)
            await self.client.hset(self.keys.writer_heartbeats, self.field, value)
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Beating:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_a_writer_holding_a_message_from_before_the_loss_keeps_the_slot_closed_until_it_is_acked(parts):
    recovery, client, keys, _ = parts
    (app,) = _apps_in_distinct_slots(1)
    assert await recovery.attempt(app)
    await client.set(keys.deferred_since, "1.0")  # the writers' ledger has been complete for long
    await client.delete(keys.epoch_of(app))
    assert not await recovery.attempt(app)
    lost = time.time()
    queue = recovery.topology.chats.name
    with _a_channel_on(recovery) as channel:
        for stamp in (lost - 1, lost + 3600):  # one numbered before the loss, one long after it
            _publish_numbered_at(channel, queue, stamp)
        held: list[int] = []
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(queue, lambda _ch, method, _p, _b: held.append(method.delivery_tag))
        deadline = time.monotonic() + 15  # a loaded machine may take more than a second to deliver both
        while len(held) < 2 and time.monotonic() < deadline:
            channel.connection.process_data_events(time_limit=0.2)
        assert len(held) == 2  # both delivered to this "writer", unacknowledged
        async with Beating(client, keys, f"{queue}|w1") as writer:
            writer.held, writer.oldest = 2, lost - 1
            await asyncio.sleep(2 * GRACE + 0.2)  # past the evidence time E
            assert await recovery.recover() == set()  # the old message may carry one of the slot's numbers
            channel.basic_ack(held[0])  # committed
            writer.held, writer.oldest = 1, lost + 3600
            # Still busy (the coarse rule would wait for it to be idle) but with a message numbered after the loss:
            assert await recovery.recover() == {application_slot(app)}


async def _lose_a_slot_past_the_evidence_time(recovery, client, keys) -> tuple[int, float]:
    """An application whose slot opened, then lost its epoch, with the ledger complete for long; waits until the
    precise rule's evidence time has passed. Returns the application and when its slot was lost."""
    (app,) = _apps_in_distinct_slots(1)
    assert await recovery.attempt(app)
    await client.set(keys.deferred_since, "1.0")
    await client.delete(keys.epoch_of(app))
    assert not await recovery.attempt(app)
    lost = time.time()
    await asyncio.sleep(2 * GRACE + 0.2)
    return app, lost


async def test_a_message_in_a_retry_tier_from_before_the_loss_keeps_the_slot_closed_until_it_is_settled(parts):
    recovery, client, keys, _ = parts
    app, lost = await _lose_a_slot_past_the_evidence_time(recovery, client, keys)
    # The ledger alone (the retry queues cannot be read): an entry from before the loss keeps the precise rule shut.
    await client.zadd(keys.deferred, {"a-retried-message": lost - 1, "a-newer-one": lost + 3600})
    assert not await recovery._settled(lost)
    await client.zrem(keys.deferred, "a-retried-message")
    assert await recovery._settled(lost)  # only a message numbered after the loss is still deferred
    # The whole round, with the message really in a retry tier (as the writer left it: ledger first, then the tier).
    await client.zadd(keys.deferred, {"a-retried-message": lost - 1})
    queue = recovery.topology.messages
    with _a_channel_on(recovery) as channel:
        _publish_numbered_at(channel, queue.retry(1), lost - 1)
        assert await recovery.recover() == set()
        got = (None, None, None)
        for _ in range(50):  # in the tier (no writer drains it here), or back in the work queue: "commit" it
            got = channel.basic_get(queue.retry(1))
            if got[0] is None:
                got = channel.basic_get(queue.name)
            if got[0] is not None:
                break
            await asyncio.sleep(0.1)
        assert got[0] is not None
        assert got[1].headers[PUBLISHED_AT_HEADER] == stamp_header(lost - 1)  # kept in the tier
        await client.zrem(keys.deferred, "a-retried-message")  # settled before the acknowledgement
        channel.basic_ack(got[0].delivery_tag)
        assert await recovery.recover() == {application_slot(app)}


async def test_a_message_ready_in_a_retry_tier_keeps_the_precise_rule_shut_even_without_a_ledger_entry(parts):
    """Condition (f): a ledger lost with Redis no longer accounts for it, and no writer holds it to report it."""
    recovery, client, keys, _ = parts
    _, lost = await _lose_a_slot_past_the_evidence_time(recovery, client, keys)
    queue = recovery.topology.chats
    with _a_channel_on(recovery) as channel:
        _publish_numbered_at(channel, queue.retry(2), lost - 1)
        assert not await recovery._settled(lost)
        assert channel.basic_get(queue.retry(2), auto_ack=True)[0] is not None  # committed, say
        assert await recovery._settled(lost)


async def test_a_ledger_lost_with_the_slot_waits_out_the_longest_retry_delay(parts):
    recovery, client, keys, _ = parts
    (app,) = _apps_in_distinct_slots(1)
    assert await recovery.attempt(app)
    await client.delete(keys.epoch_of(app))
    assert not await recovery.attempt(app)
    await asyncio.sleep(2 * GRACE + 0.2)
    assert not await recovery._settled(time.time() - 2 * GRACE - 0.2)  # no ledger: it may have lost entries
    await client.set(keys.deferred_since, repr(time.time()))  # a writer restarted it just now
    assert not await recovery._settled(time.time() - 2 * GRACE - 0.2)  # a deferred message may still come back


# -- The same with the real API and writers (separate processes) and the real broker --------------------------------


@pytest.fixture(scope="module")
def running():
    """API (2 workers) and both writers as processes, two applications in distinct slots with a chat each."""
    ns = Namespace.create("rec")
    system = System(ns, LOG_ROOT / ns.name, api_workers=2)
    engine = make_engine(ns.settings.database_url, pool_size=2)
    try:
        system.start()
        apps: dict[int, str] = {}
        while len({application_slot(app) for app in apps}) < 2 or len(apps) < 2:
            token = requests.post(f"{system.base_url}/applications", json={"name": "t"}, timeout=15).json()["token"]
            with engine.connect() as conn:
                app = conn.execute(
                    text("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)"), {"t": token}
                ).scalar_one()
            if application_slot(int(app)) not in {application_slot(a) for a in apps}:
                apps[int(app)] = token
                resp = requests.post(f"{system.base_url}/applications/{token}/chats", json={"name": "c"}, timeout=15)
                assert resp.status_code == 201, resp.text
        yield ns, system, engine, apps
    finally:
        system.stop()
        engine.dispose()
        ns.destroy()


def _stored(engine, app: int, chat: int = 1) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
                "WHERE c.application_id = :a AND c.number = :c"
            ),
            {"a": app, "c": chat},
        ).all()
    return {int(n): body for n, body in rows}


def _lose_slot(ns: Namespace, app: int) -> None:
    """What a shard losing its data does to one application's slot: its epoch and counters are gone."""
    client = sync_client(ns.settings.redis_url)
    keys = RedisKeys(ns.settings.redis_key_prefix)
    client.delete(keys.epoch_of(app), keys.numbers(app))
    client.close()


def _publish(ns: Namespace, queue: str, body: bytes, stamp: float) -> None:
    connection = BrokerNodes.from_settings(ns.settings).connect_blocking()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2, headers={PUBLISHED_AT_HEADER: stamp_header(stamp)})
        channel.basic_publish("", queue, body, props, mandatory=True)
    finally:
        connection.close()


def test_a_slot_lost_under_another_tenants_continuous_load_reopens_within_a_bounded_time(running):
    ns, system, engine, apps = running
    other, lost = sorted(apps)
    topology = Topology.from_settings(ns.settings)
    # Another tenant's message whose chat is not written yet keeps cycling through the retry tiers for the whole
    # test (stamped far after the loss): the queues are never all empty, so only the precise rule can re-open.
    _publish(ns, topology.messages.name, MessageUpsert(other, 999, 1, "later", 0).encode(), time.time() + 3600)
    with MessageLoad(system.base_url, apps) as load:
        time.sleep(2)
        lost_at = time.monotonic()
        _lose_slot(ns, lost)
        reopened = wait_for(lambda: load.first_201(lost, lost_at + 0.5), 40, what="the lost slot re-opened")
        time.sleep(1)
    reopened_at = load.first_201(lost, lost_at + 0.5)
    assert reopened and reopened_at is not None
    took = reopened_at - lost_at
    # grace (2 s) + evidence (another 2 s) + a recovery round (~2.5 s) + the watchdog's second: well under 15 s.
    assert took < 15, f"re-opened only {took:.1f}s after the loss"
    assert set(load.statuses({other})) == {201}, load.statuses({other})  # the other tenant never paused
    during = load.statuses({lost}, since=lost_at)
    assert during[503] > 0 and set(during) <= {201, 503}, during
    assert load.statuses({other}, since=reopened_at)[201] > 0  # the load went on while the slot re-opened
    accepted = [(n, body) for _, a, status, n, body in load.answers if a == lost and status == 201]
    numbers = [n for n, _ in accepted]
    assert len(numbers) == len(set(numbers)), "a number was answered twice"
    wait_for(lambda: {n for n in numbers} <= set(_stored(engine, lost)), 60, what="every accepted message stored")
    stored = _stored(engine, lost)
    assert all(stored[n] == body for n, body in accepted), "a number was given to two messages"
    print(f"lost slot re-opened {took:.1f}s after the loss under load; its tenant's answers meanwhile {dict(during)}")


def test_a_message_deferred_from_before_the_loss_keeps_the_slot_closed_until_it_is_committed(running):
    ns, system, engine, apps = running
    other, lost = sorted(apps)
    topology = Topology.from_settings(ns.settings)
    with engine.connect() as conn:
        chats = conn.execute(text("SELECT MAX(number) FROM chats WHERE application_id = :a"), {"a": other})
        next_chat = int(chats.scalar_one() or 0) + 1
    # Published before the loss, for a chat not written yet: the message-writer defers it (retry tiers) again and again.
    _publish(ns, topology.messages.name, MessageUpsert(other, next_chat, 1, "deferred", 0).encode(), time.time())
    time.sleep(0.5)
    lost_at = time.monotonic()
    _lose_slot(ns, lost)
    url = f"{system.base_url}/applications/{apps[lost]}/chats/1/messages"
    time.sleep(10)  # well past the grace period, the evidence time and a few recovery rounds
    assert requests.post(url, json={"body": "too early"}, timeout=15).status_code == 503
    resp = requests.post(f"{system.base_url}/applications/{apps[other]}/chats", json={"name": "c"}, timeout=15)
    assert (resp.status_code, resp.json()["chat_number"]) == (201, next_chat)  # its chat: now it can be written
    wait_for(lambda: 1 in _stored(engine, other, next_chat), 30, what="the deferred message committed")
    committed_at = time.monotonic()
    wait_for(lambda: requests.post(url, json={"body": "after"}, timeout=15).status_code == 201, 30, what="re-open")
    print(f"closed {committed_at - lost_at:.1f}s until the deferred message was committed, re-opened "
          f"{time.monotonic() - committed_at:.1f}s after that")  # fmt: skip


async def test_the_api_stamps_each_publish_and_never_sends_one_past_its_deadline(parts):
    recovery, *_ = parts
    topology = recovery.topology
    publisher = ConfirmingPublisher(BrokerNodes(recovery.broker.urls[0], API), declare=topology.declare, timeout=0.5)
    await publisher.start()
    connection = recovery.broker.connect_blocking()
    try:

        async def request(delay: float) -> None:  # one request: numbered, then published ``delay`` s later
            stamp = time.time()
            await asyncio.sleep(delay)
            await publisher.publish(topology.chats.name, b"{}", stamp)

        before = time.time()
        await request(0)
        with pytest.raises(PublishError):  # numbered longer ago than the publish timeout: not sent at all
            await request(0.6)
        channel = connection.channel()
        got = [channel.basic_get(topology.chats.name, auto_ack=True) for _ in range(2)]
        assert got[1][0] is None  # only the first one reached the queue
        stamp = read_stamp(got[0][1].headers[PUBLISHED_AT_HEADER])
        # The time it was numbered, not the time it was confirmed; the header holds whole milliseconds (rounded).
        assert before - 0.0005 <= stamp <= before + 0.2
    finally:
        connection.close()
        await publisher.close()
