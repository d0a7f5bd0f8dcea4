"""The asyncio confirming publisher against the real local RabbitMQ (no mocks of pika).

Delays and drops are made with a small TCP proxy in front of the broker: holding its broker->client direction
keeps confirms from arriving (timeouts), cutting its sockets drops the connection mid-flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pika
import pytest

from chat_api.adapters.publisher import NACKS_BEFORE_RECONNECT, ConfirmingPublisher, PublishError
from chat_common.clients.broker import API, BrokerNodes
from chat_common.wire.bundles import BUNDLE_HEADER, MAX_BUNDLE_UPSERTS, is_bundle, unpack
from chat_common.wire.topology import Topology
from chat_devtools.ports import closed_port

BROKER = ("127.0.0.1", 5672)
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def amqp_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


# -- direct broker access (blocking pika, run in a thread so that the loop under test keeps running) -----------
@contextlib.contextmanager
def blocking_channel() -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = BrokerNodes(AMQP_URL).connect_blocking()
    try:
        yield connection.channel()
    finally:
        connection.close()


def _declare(queue: str, arguments: dict) -> None:
    with blocking_channel() as channel:
        channel.queue_declare(queue, durable=True, arguments=arguments)


def _drain(queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    got = []
    with blocking_channel() as channel:
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((properties, body))


async def drain_messages(queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message in the queue, as the broker holds it (bundles whole)."""
    return await asyncio.to_thread(_drain, queue)


async def drain(queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every upsert in the queue, in order: a bundle's upserts one by one (with the bundle's properties)."""
    upserts = []
    for properties, body in await drain_messages(queue):
        if is_bundle(properties.headers):
            upserts.extend((properties, part) for part, _ in unpack(body, properties.headers))
        else:
            upserts.append((properties, body))
    return upserts


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A topology of the test's own; every queue of it (and ``<prefix>.extra.*``) is deleted afterwards."""
    topo = Topology(prefix=f"test_pub_{uuid4().hex[:8]}")
    yield topo
    with blocking_channel() as channel:
        for work in (topo.chats, topo.messages):
            for name in (work.name, work.dead_letter, *work.retry_queues):
                channel.queue_delete(name)
        channel.queue_delete(f"{topo.prefix}.extra.nack")


@contextlib.asynccontextmanager
async def running(
    url: str, topology: Topology, ready_within: float | None = 5.0, **options: float
) -> AsyncIterator[ConfirmingPublisher]:
    """A started publisher, ready (connected, confirm mode) unless ``ready_within`` is None; closed afterwards."""
    publisher = ConfirmingPublisher(BrokerNodes(url, API), declare=topology.declare, **options)
    await publisher.start()
    try:
        if ready_within is not None:
            await until_ready(publisher, ready_within)
        yield publisher
    finally:
        await publisher.close()


async def until_ready(publisher: ConfirmingPublisher, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not publisher.is_ready:
        assert time.monotonic() < deadline, "publisher did not become ready"
        await asyncio.sleep(0.01)


class BrokerProxy:
    """TCP proxy to the local broker; ``hold()`` stops broker->client bytes (kept, not lost), ``cut()`` drops all."""

    def __init__(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pumps: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> BrokerProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = amqp_url(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._server.close()
        self.cut()
        await asyncio.gather(*self._pumps, *self._handlers, return_exceptions=True)

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Abort every proxied connection (the client sees the broker vanish); new ones flow again."""
        for pump in self._pumps:
            pump.cancel()
        self._flowing.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())
        broker_reader, broker_writer = await asyncio.open_connection(*BROKER)
        pumps = {
            asyncio.create_task(self._pump(client_reader, broker_writer, gate=None)),
            asyncio.create_task(self._pump(broker_reader, client_writer, gate=self._flowing)),
        }
        self._pumps |= pumps
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for writer in (client_writer, broker_writer):
            writer.transport.abort()
        self._pumps -= pumps
        self._handlers.discard(asyncio.current_task())

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event | None) -> None:
        while data := await reader.read(65536):
            if gate is not None:
                await gate.wait()
            writer.write(data)
            await writer.drain()


# -- tests -----------------------------------------------------------------------------------------------------
async def test_confirmed_message_is_in_the_queue_and_persistent(topology: Topology) -> None:
    queue = topology.messages.name
    async with running(AMQP_URL, topology) as publisher:
        await publisher.publish(queue, b'{"n": 1}')
    [(properties, body)] = await drain_messages(queue)
    assert body == b'{"n": 1}'
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert not is_bundle(properties.headers)  # a lone publish is a plain message, as before bundles


async def test_concurrent_publishes_all_confirmed_exactly_once(topology: Topology) -> None:
    queue = topology.chats.name
    bodies = [f'{{"n": {i}}}'.encode() for i in range(200)]
    # One message each (coalescing off), so that the broker confirms many at once (multiple=True).
    publisher = ConfirmingPublisher(BrokerNodes(AMQP_URL, API), declare=topology.declare, coalesce=False)
    confirms = []  # spy on our own ack handler (registered when the channel opens): which frames carried acks
    original = publisher._on_confirm
    publisher._on_confirm = lambda frame: (confirms.append(frame.method.multiple), original(frame))
    await publisher.start()
    try:
        await until_ready(publisher)
        await asyncio.wait_for(asyncio.gather(*(publisher.publish(queue, body) for body in bodies)), 10)
        assert publisher._pending == {}
    finally:
        await publisher.close()
    assert any(confirms), "no multiple=True ack seen"
    assert len(confirms) < len(bodies)
    assert Counter(body for _, body in await drain(queue)) == Counter(bodies)


async def test_returned_message_fails_only_its_own_request(topology: Topology) -> None:
    queue = topology.messages.name
    missing = f"{topology.prefix}.no_such_queue"
    async with running(AMQP_URL, topology) as publisher:
        results = await asyncio.gather(
            publisher.publish(queue, b"1"),
            publisher.publish(missing, b"2"),
            publisher.publish(queue, b"3"),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], PublishError)
        await publisher.publish(queue, b"4")  # the channel survived the return
    assert [body for _, body in await drain(queue)] == [b"1", b"3", b"4"]


async def test_nack_fails_only_its_own_request(topology: Topology) -> None:
    queue = f"{topology.prefix}.extra.nack"
    await asyncio.to_thread(_declare, queue, {"x-max-length": 1, "x-overflow": "reject-publish"})
    async with running(AMQP_URL, topology, coalesce=False) as publisher:
        results = await asyncio.gather(
            publisher.publish(queue, b"first"), publisher.publish(queue, b"second"), return_exceptions=True
        )
        assert results[0] is None
        assert isinstance(results[1], PublishError)
    assert [body for _, body in await drain(queue)] == [b"first"]


async def test_a_run_of_refused_messages_makes_the_publisher_reconnect(topology: Topology) -> None:
    """RabbitMQ 3.10 can keep refusing every message on a channel after a quorum queue's leader died (see
    NACKS_BEFORE_RECONNECT): a long run of nacks gets a new connection, on which publishing works again."""
    queue = f"{topology.prefix}.extra.nack"
    await asyncio.to_thread(_declare, queue, {"x-max-length": 0, "x-overflow": "reject-publish"})  # refuses all
    async with running(AMQP_URL, topology) as publisher:
        first = publisher._connection
        for _ in range(NACKS_BEFORE_RECONNECT):  # one message each
            with pytest.raises(PublishError, match="refused"):
                await publisher.publish(queue, b"refused")
        deadline = time.monotonic() + 5
        while publisher._connection is first or not publisher.is_ready:
            assert time.monotonic() < deadline, "the publisher did not reconnect after a run of refusals"
            await asyncio.sleep(0.05)
        await publisher.publish(topology.messages.name, b"after")
    assert [body for _, body in await drain(topology.messages.name)] == [b"after"]


async def test_refusals_of_one_queue_make_the_publisher_reconnect_even_while_another_queue_is_confirmed(
    topology: Topology,
) -> None:
    """The failover case: a rarely used queue refused every time while a busy one goes through on the same channel
    (tests/cluster/test_rabbit_failover.py: chat creates refused, message creates accepted). A count of refusals in
    a row over all queues would be reset by each busy confirm and never reconnect."""
    queue = f"{topology.prefix}.extra.nack"
    await asyncio.to_thread(_declare, queue, {"x-max-length": 0, "x-overflow": "reject-publish"})  # refuses all
    async with running(AMQP_URL, topology) as publisher:
        first = publisher._connection
        for i in range(NACKS_BEFORE_RECONNECT):
            with pytest.raises(PublishError, match="refused"):
                await publisher.publish(queue, b"refused")
            if i < NACKS_BEFORE_RECONNECT - 1:
                await publisher.publish(topology.messages.name, b"busy")  # confirmed in between
        deadline = time.monotonic() + 5
        while publisher._connection is first or not publisher.is_ready:
            assert time.monotonic() < deadline, "the publisher did not reconnect after a queue's run of refusals"
            await asyncio.sleep(0.05)


async def test_channel_closed_by_broker_fails_pending_then_recovers(topology: Topology) -> None:
    queue = topology.messages.name
    async with running(AMQP_URL, topology, timeout=10.0) as publisher:
        # A publish to a missing exchange makes the broker close the channel; the broker ignores what follows
        # it on that channel, so the ten publishes below are in flight and can only fail.
        publisher._channel.basic_publish(f"{topology.prefix}.no_such_exchange", "x", b"")
        started = time.monotonic()
        lost = asyncio.gather(*(publisher.publish(queue, b"lost") for _ in range(10)), return_exceptions=True)
        results = await asyncio.wait_for(lost, 5)
        assert all(isinstance(result, PublishError) for result in results), results
        assert time.monotonic() - started < 2.0  # failed by the channel closing, not by the 10 s timeout
        assert publisher._pending == {}
        await until_ready(publisher)
        await publisher.publish(queue, b"after")
    assert [body for _, body in await drain(queue)] == [b"after"]


async def test_connection_lost_mid_flight_fails_pending_then_recovers(topology: Topology) -> None:
    queue = topology.messages.name
    async with BrokerProxy() as proxy, running(proxy.url, topology, timeout=10.0) as publisher:
        proxy.hold()  # the broker receives and confirms, but the confirms stay in the proxy
        pending = [asyncio.create_task(publisher.publish(queue, b"in flight")) for _ in range(10)]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in pending)
        proxy.cut()
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(result, PublishError) for result in results), results
        assert time.monotonic() - started < 2.0
        assert not publisher.is_ready
        await until_ready(publisher)
        await publisher.publish(queue, b"after")


async def test_broker_down_at_start_fails_quickly(topology: Topology) -> None:
    async with running(amqp_url(closed_port()), topology, ready_within=None, connect_wait=0.5) as publisher:
        assert not publisher.is_ready
        started = time.monotonic()
        with pytest.raises(PublishError):
            await publisher.publish(topology.messages.name, b"x")
        assert time.monotonic() - started < 0.5 + 1.0
        # A connection attempt failed less than a second ago: the next request fails without waiting.
        started = time.monotonic()
        with pytest.raises(PublishError):
            await publisher.publish(topology.messages.name, b"x")
        assert time.monotonic() - started < 0.1
        assert not publisher.is_ready


async def test_url_list_connects_through_the_node_that_answers(topology: Topology) -> None:
    queue = topology.messages.name
    async with running(f"{amqp_url(closed_port())}, {AMQP_URL}", topology, ready_within=3.0) as publisher:
        await publisher.publish(queue, b"via second")
    assert [body for _, body in await drain(queue)] == [b"via second"]


async def test_missing_confirm_times_out_and_cancel_leaks_nothing(topology: Topology) -> None:
    queue = topology.messages.name
    async with BrokerProxy() as proxy, running(proxy.url, topology, timeout=0.3) as publisher:
        proxy.hold()
        started = time.monotonic()
        with pytest.raises(PublishError, match="did not confirm"):
            await asyncio.wait_for(publisher.publish(queue, b"late"), 5)
        assert 0.25 < time.monotonic() - started < 1.0
        assert publisher._pending == {}
        cancelled = asyncio.create_task(publisher.publish(queue, b"cancelled"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert publisher._pending == {}
        proxy.release()
        await publisher.publish(queue, b"on time")  # late confirms of the earlier tags resolve nothing wrong
        assert publisher.is_ready


async def test_close_fails_pending_and_stops_every_task(topology: Topology) -> None:
    queue = topology.messages.name
    publisher = ConfirmingPublisher(BrokerNodes(AMQP_URL, API), declare=topology.declare)
    await publisher.start()
    await until_ready(publisher)
    pending = [asyncio.create_task(publisher.publish(queue, b"x")) for _ in range(20)]
    await asyncio.sleep(0)  # the publishes are sent; their confirms cannot have been read yet
    await publisher.close()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
    assert all(isinstance(result, PublishError) for result in results), results
    assert not publisher.is_ready
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(PublishError):
        await publisher.publish(queue, b"after close")


# -- coalescing: the publishes of one loop turn travel as one bundle ------------------------------------------------
async def test_publishes_of_one_turn_travel_as_one_bundle_each_confirmed(topology: Topology) -> None:
    queue, other = topology.messages.name, topology.chats.name
    bodies = [f'{{"n": {i}}}'.encode() for i in range(50)]
    async with running(AMQP_URL, topology) as publisher:
        stamps = [time.time() - 1 + i / 1000 for i in range(50)]
        results = await asyncio.gather(
            *(publisher.publish(queue, body, stamp) for body, stamp in zip(bodies, stamps, strict=True)),
            publisher.publish(other, b'{"chat": 1}'),
        )
        assert results == [None] * 51
        assert publisher._pending == {} and publisher._timers == {}
    [(properties, body)] = await drain_messages(queue)
    assert properties.headers[BUNDLE_HEADER] == 50
    assert properties.content_type == "application/x-ndjson" and properties.delivery_mode == 2
    assert [(part, round(stamp, 3)) for part, stamp in unpack(body, properties.headers)] == [
        (part, round(stamp, 3)) for part, stamp in zip(bodies, stamps, strict=True)
    ]
    [(properties, body)] = await drain_messages(other)  # another queue: a message of its own, not bundled
    assert body == b'{"chat": 1}' and not is_bundle(properties.headers)


async def test_coalescing_off_sends_one_message_per_publish(topology: Topology) -> None:
    queue = topology.messages.name
    async with running(AMQP_URL, topology, coalesce=False) as publisher:
        await asyncio.gather(*(publisher.publish(queue, b"%d" % i) for i in range(10)))
    messages = await drain_messages(queue)
    assert [body for _, body in messages] == [b"%d" % i for i in range(10)]
    assert not any(is_bundle(properties.headers) for properties, _ in messages)


async def test_a_full_bundle_is_sent_and_the_rest_starts_another(topology: Topology) -> None:
    queue = topology.messages.name
    count = MAX_BUNDLE_UPSERTS * 2 + 5
    async with running(AMQP_URL, topology) as publisher:
        await asyncio.gather(*(publisher.publish(queue, b"%d" % i) for i in range(count)))
    messages = await drain_messages(queue)
    assert [properties.headers[BUNDLE_HEADER] for properties, _ in messages] == [
        MAX_BUNDLE_UPSERTS,
        MAX_BUNDLE_UPSERTS,
        5,
    ]
    assert b"\n".join(body for _, body in messages).split(b"\n") == [b"%d" % i for i in range(count)]


async def test_a_nacked_bundle_fails_only_its_own_creates(topology: Topology) -> None:
    """A nack refuses one message: every create it carries is answered with a failure, no other create is."""
    queue = f"{topology.prefix}.extra.nack"
    await asyncio.to_thread(_declare, queue, {"x-max-length": 1, "x-overflow": "reject-publish"})
    async with running(AMQP_URL, topology) as publisher:
        first = await asyncio.gather(publisher.publish(queue, b"a"), publisher.publish(queue, b"b"))
        assert first == [None, None]  # one bundle: the one message the queue takes
        second = await asyncio.gather(
            publisher.publish(queue, b"c"),
            publisher.publish(queue, b"d"),
            publisher.publish(topology.messages.name, b"elsewhere"),
            return_exceptions=True,
        )
        assert [type(result) for result in second] == [PublishError, PublishError, type(None)], second
    assert [body for _, body in await drain(queue)] == [b"a", b"b"]
    assert [body for _, body in await drain(topology.messages.name)] == [b"elsewhere"]


async def test_a_bundle_is_abandoned_by_its_oldest_stamp_deadline(topology: Topology) -> None:
    """Numbering recovery counts on nothing stamped ``s`` being confirmed after ``s + timeout``: a bundle's deadline
    is its oldest create's."""
    queue = topology.messages.name
    async with BrokerProxy() as proxy, running(proxy.url, topology, timeout=1.0) as publisher:
        proxy.hold()
        started = time.time()
        results = await asyncio.wait_for(
            asyncio.gather(
                publisher.publish(queue, b"old", started - 0.7),  # 0.3 s left
                publisher.publish(queue, b"new", started),  # 1 s left, but in the same message
                return_exceptions=True,
            ),
            5,
        )
        assert all(isinstance(result, PublishError) for result in results), results
        assert time.time() - started < 0.8
        assert publisher._pending == {} and publisher._timers == {}
        proxy.release()


async def test_the_coalescing_wait_gathers_publishes_of_later_turns(topology: Topology) -> None:
    queue = topology.messages.name
    async with running(AMQP_URL, topology, coalesce_wait=0.2) as publisher:

        async def later(delay: float, body: bytes) -> None:
            await asyncio.sleep(delay)
            await publisher.publish(queue, body)

        await asyncio.gather(later(0, b"a"), later(0.05, b"b"), later(0.1, b"c"))
    [(properties, body)] = await drain_messages(queue)
    assert properties.headers[BUNDLE_HEADER] == 3 and body == b"a\nb\nc"
