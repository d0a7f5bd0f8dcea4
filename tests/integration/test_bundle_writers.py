"""The writers consume bundles (several upserts in one message, chat_common.wire.bundles) on the real services.

Each bundle is published to a private system's real work queue as the coalescing API would send it, beside single
upserts in the old format (a rolling upgrade has both in the queue), and what reaches MariaDB, the dead-letter queue,
the retry tiers and a live stream is checked per upsert.
"""

from __future__ import annotations

import time

import pika
import pytest

from chat_common.clients.broker import BrokerNodes
from chat_common.wire import bundles
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.topology import Topology
from chat_common.writing.batches import ATTEMPT_HEADER, PUBLISHED_AT_HEADER
from chat_common.writing.routing import DEAD_REASON_HEADER
from chat_devtools.http import wait_for
from chat_devtools.sse import Listener, stream_url

UNKNOWN_APPLICATION = 4_000_000_000
WRONG_TYPES = b'{"application_id": "x", "chat_number": [], "message_number": null}'


@pytest.fixture
def topology(fresh_namespace):
    return Topology(fresh_namespace.settings.queue_prefix, fresh_namespace.settings.writer_retry_delays_seconds)


class Broker:
    """A confirm-mode channel on the namespace's broker."""

    def __init__(self, namespace) -> None:
        self.connection = BrokerNodes.from_settings(namespace.settings).connect_blocking()
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, queue: str, body: bytes, headers: dict | None = None) -> None:
        properties = pika.BasicProperties(delivery_mode=2, content_type="application/json", headers=headers)
        self.channel.basic_publish("", queue, body, properties, mandatory=True)

    def bundle(self, queue: str, *bodies: bytes, stamp: float | None = None) -> list[float]:
        """Publish ``bodies`` as one bundle; returns each upsert's stamp."""
        first = stamp if stamp is not None else time.time()
        stamps = [first + i / 1000 for i in range(len(bodies))]
        body, headers = bundles.pack(list(bodies), stamps)
        self.publish(queue, body, headers)
        return stamps

    def ready(self, queue: str) -> int:
        return self.channel.queue_declare(queue, passive=True).method.message_count

    def take_all(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        taken = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def broker(fresh_namespace):
    broker = Broker(fresh_namespace)
    yield broker
    broker.close()


def _app_id(private_db, token: str) -> int:
    return private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)


def _message(app_id: int, chat: int, number: int, body: str | None = None) -> bytes:
    return MessageUpsert(app_id, chat, number, body or f"message {number}").encode()


def test_bundles_and_single_upserts_are_committed_per_upsert_and_announced_once(
    private_system, private_api, private_db, broker, topology
):
    token, chat = private_api.new_tenant_with_chat("bundles")
    app_id = _app_id(private_db, token)
    listener = Listener(stream_url(private_api.base_url, token, chat, after=0)).start()
    try:
        assert listener.status == 200
        time.sleep(0.5)  # the stream's chat is listed for the writers and bound
        broker.bundle(topology.messages.name, *(_message(app_id, chat, n) for n in (1, 2, 3)))
        broker.publish(topology.messages.name, _message(app_id, chat, 4))  # the old format, side by side
        broker.bundle(topology.messages.name, *(_message(app_id, chat, n) for n in (5, 6)))
        listener.wait_numbers([1, 2, 3, 4, 5, 6], timeout=15)
        assert private_db.messages_of(token, chat) == [(n, f"message {n}") for n in range(1, 7)]
        time.sleep(1.0)
        assert listener.numbers() == [1, 2, 3, 4, 5, 6]  # each upsert of a bundle announced once
        assert broker.ready(topology.messages.dead_letter) == 0
    finally:
        listener.close()


def test_a_poison_upsert_of_a_bundle_is_parked_alone_with_its_reason_and_the_rest_committed(
    private_system, private_api, private_db, broker, topology
):
    token, chat = private_api.new_tenant_with_chat("poison in a bundle")
    app_id = _app_id(private_db, token)
    orphan = _message(UNKNOWN_APPLICATION, 1, 1, "orphan")
    stamps = broker.bundle(
        topology.messages.name, _message(app_id, chat, 1), orphan, _message(app_id, chat, 2), WRONG_TYPES
    )
    dead = topology.messages.dead_letter
    wait_for(lambda: broker.ready(dead) == 2, timeout=20, what="the two poison upserts parked")
    wait_for(lambda: len(private_db.messages_of(token, chat)) == 2, timeout=20, what="the healthy upserts")
    time.sleep(1.5)  # nothing redelivered: the bundle was acknowledged, not rejected
    assert broker.ready(dead) == 2 and broker.ready(topology.messages.name) == 0
    parked = {body: properties for properties, body in broker.take_all(dead)}
    assert set(parked) == {orphan, WRONG_TYPES}  # each alone, not the bundle
    for body, stamp in ((orphan, stamps[1]), (WRONG_TYPES, stamps[3])):
        headers = parked[body].headers
        assert bundles.BUNDLE_HEADER not in headers and parked[body].delivery_mode == 2
        assert headers[ATTEMPT_HEADER] == 0 and headers[PUBLISHED_AT_HEADER] == round(stamp * 1000)
    assert parked[orphan].headers[DEAD_REASON_HEADER].startswith("application gone")
    assert parked[WRONG_TYPES].headers[DEAD_REASON_HEADER].startswith("invalid")
    assert private_db.messages_of(token, chat) == [(1, "message 1"), (2, "message 2")]
    assert private_system.message_writer.popen.poll() is None


def test_a_bundle_part_whose_chat_is_not_written_yet_is_retried_alone_and_committed_later(
    private_system, private_api, private_db, broker, topology
):
    token, chat = private_api.new_tenant_with_chat("early part")
    app_id = _app_id(private_db, token)
    late_chat = 77  # its chat row is written only later
    broker.bundle(topology.messages.name, _message(app_id, chat, 1), _message(app_id, late_chat, 1, "I was early"))
    wait_for(lambda: private_db.messages_of(token, chat) == [(1, "message 1")], timeout=20, what="the healthy part")
    assert private_db.messages_of(token, late_chat) == []
    # The chat arrives in a bundle too, on the chat-writer's queue.
    broker.bundle(topology.chats.name, ChatUpsert(app_id, late_chat, "late chat").encode(), stamp=time.time())
    wait_for(lambda: private_db.messages_of(token, late_chat) == [(1, "I was early")], timeout=30, what="retried part")
    assert private_db.messages_of(token, chat) == [(1, "message 1")]  # the healthy part was not written twice
    assert broker.ready(topology.messages.dead_letter) == 0 and broker.ready(topology.chats.dead_letter) == 0


def test_a_malformed_bundle_is_dead_lettered_whole_and_the_writer_keeps_consuming(
    private_system, private_api, private_db, broker, topology
):
    token, chat = private_api.new_tenant_with_chat("malformed")
    app_id = _app_id(private_db, token)
    body = _message(app_id, chat, 1) + b"\n" + _message(app_id, chat, 2)
    headers = {bundles.BUNDLE_HEADER: 3, bundles.STAMPS_HEADER: [1, 2, 3], PUBLISHED_AT_HEADER: 1}  # says 3, holds 2
    broker.publish(topology.messages.name, body, headers)
    dead = topology.messages.dead_letter
    wait_for(lambda: broker.ready(dead) == 1, timeout=20, what="the malformed bundle dead-lettered")
    broker.bundle(topology.messages.name, _message(app_id, chat, 3), _message(app_id, chat, 4))
    wait_for(lambda: len(private_db.messages_of(token, chat)) == 2, timeout=20, what="the next bundle")
    assert private_db.messages_of(token, chat) == [(3, "message 3"), (4, "message 4")]  # nothing of the malformed one
    [(properties, parked)] = broker.take_all(dead)
    assert parked == body and properties.headers["x-death"][0]["reason"] == "rejected"  # the broker moved it, whole


def test_a_writer_killed_mid_bundle_leaves_nothing_lost_or_doubled(
    private_system, private_api, private_db, broker, topology
):
    token, chat = private_api.new_tenant_with_chat("killed")
    app_id = _app_id(private_db, token)
    private_system.message_writer.stop()
    total, size = 32_000, 32
    for first in range(1, total + 1, size):
        broker.bundle(topology.messages.name, *(_message(app_id, chat, n) for n in range(first, first + size)))
    private_system.message_writer.start()
    deadline = time.monotonic() + 30
    while private_db.scalar("SELECT COUNT(*) FROM messages") == 0:  # polled tightly: the writer is fast
        assert time.monotonic() < deadline, "no row written"
        time.sleep(0.01)
    private_system.message_writer.kill()  # SIGKILL: whatever it held unacknowledged goes back to the queue
    written_at_kill = private_db.scalar("SELECT COUNT(*) FROM messages")
    assert written_at_kill < total, "the writer drained everything before the kill: nothing is tested"
    private_system.message_writer.start()
    wait_for(lambda: private_db.scalar("SELECT COUNT(*) FROM messages") == total, timeout=120, what="every row")
    time.sleep(1.0)
    numbers = [n for n, _ in private_db.messages_of(token, chat)]
    assert numbers == list(range(1, total + 1))  # each once
    assert broker.ready(topology.messages.dead_letter) == 0 and broker.ready(topology.messages.name) == 0
