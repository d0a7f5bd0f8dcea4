"""Queues left by an earlier version: classic queues (a clear startup error, a migration to quorum that loses
nothing) and TTL retry tiers (emptied into their work queue, then deleted).

Runs on the shared broker under queue names of its own (never the default ``chat_system`` prefix).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest

from chat_common.clients.broker import BrokerNodes
from chat_common.config import Settings
from chat_common.ops.queue_migration import migrate
from chat_common.wire.topology import QueueMismatch, Topology
from chat_common.writing.batches import ATTEMPT_HEADER, PUBLISHED_AT_HEADER


@pytest.fixture
def settings() -> Iterator[Settings]:
    s = Settings.from_env(queue_prefix=f"test_qmig_{uuid.uuid4().hex[:8]}", writer_retry_delays_seconds=(1, 5))
    yield s
    connection = BrokerNodes.from_settings(s).connect_blocking()
    channel = connection.channel()
    for queue in (Topology.from_settings(s).chats, Topology.from_settings(s).messages):
        for name in [*queue.arguments(), *queue.legacy_retry_queues]:
            for suffix in ("", ".migrating"):
                channel.queue_delete(name + suffix)
    connection.close()


def _connect(settings: Settings):
    return BrokerNodes.from_settings(settings).connect_blocking()


def test_quorum_declare_over_classic_queues_fails_naming_the_fix(settings):
    connection = _connect(settings)
    try:
        Topology(settings.queue_prefix, settings.writer_retry_delays_seconds, "classic").declare(connection.channel())
        with pytest.raises(QueueMismatch) as failure:
            Topology.from_settings(settings).declare(connection.channel())
        message = str(failure.value)
        assert "python -m chat_common.ops.queue_migration" in message and "QUEUE_TYPE=classic" in message
        # QUEUE_TYPE=classic keeps working on them: exactly the arguments of earlier versions.
        Topology(settings.queue_prefix, settings.writer_retry_delays_seconds, "classic").declare(connection.channel())
    finally:
        connection.close()


def test_migration_moves_every_message_into_quorum_queues_and_is_idempotent(settings):
    classic = Topology(settings.queue_prefix, settings.writer_retry_delays_seconds, "classic")
    connection = _connect(settings)
    channel = connection.channel()
    classic.declare(channel)
    queue = classic.messages
    channel.confirm_delivery()
    for i in range(50):
        headers = {ATTEMPT_HEADER: 3}
        channel.basic_publish("", queue.name, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2, headers=headers))
    channel.basic_publish("", queue.dead_letter, b"dead", pika.BasicProperties(delivery_mode=2))
    connection.close()

    migrated = migrate(settings)
    assert queue.name in migrated and queue.dead_letter in migrated and classic.chats.name in migrated
    assert migrate(settings) == []  # a second run finds nothing to do

    connection = _connect(settings)
    try:
        channel = connection.channel()
        Topology.from_settings(settings).declare(channel)  # quorum declaration accepted now
        bodies, attempts = [], set()
        while True:
            method, properties, body = channel.basic_get(queue.name, auto_ack=True)
            if method is None:
                break
            bodies.append(body.decode())
            attempts.add((properties.headers or {}).get(ATTEMPT_HEADER))
        assert sorted(bodies) == sorted(f"m{i}" for i in range(50))
        assert attempts == {3}  # headers (the attempt count) survive the move
        method, _, body = channel.basic_get(queue.dead_letter, auto_ack=True)
        assert body == b"dead"
    finally:
        connection.close()


def test_a_migration_interrupted_after_the_old_queue_was_deleted_is_finished_by_the_next_run(settings):
    queue = Topology.from_settings(settings).messages
    connection = _connect(settings)
    channel = connection.channel()
    # What a crash between "delete the classic queue" and "declare it anew" leaves: the messages in the holding queue.
    channel.queue_declare(queue.name + ".migrating", durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", queue.name + ".migrating", f"h{i}".encode(), pika.BasicProperties(delivery_mode=2))
    connection.close()

    migrate(settings)

    connection = _connect(settings)
    try:
        channel = connection.channel()
        bodies = []
        while (got := channel.basic_get(queue.name, auto_ack=True))[0] is not None:
            bodies.append(got[2].decode())
        assert sorted(bodies) == [f"h{i}" for i in range(5)]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # the holding queue is gone
            channel.queue_declare(queue.name + ".migrating", passive=True)
    finally:
        connection.close()


def old_ttl_tier(queue, delay: int) -> dict:
    """The arguments version 0.1 declared its retry tiers with (a TTL queue dead-lettering into the work queue)."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay * 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue.name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_retry_tiers_of_an_earlier_version_are_emptied_into_the_work_queue_and_deleted(settings):
    queue = Topology.from_settings(settings).messages
    old = f"{queue.name}.retry.5s"
    assert old in queue.legacy_retry_queues
    connection = _connect(settings)
    channel = connection.channel()
    Topology.from_settings(settings).declare(channel)
    channel.queue_declare(old, durable=True, arguments=old_ttl_tier(queue, 5))
    channel.confirm_delivery()
    for i in range(20):
        headers = {ATTEMPT_HEADER: 2, PUBLISHED_AT_HEADER: 1_000 + i}
        channel.basic_publish("", old, f"r{i}".encode(), pika.BasicProperties(delivery_mode=2, headers=headers))
    connection.close()

    assert old in migrate(settings)  # within the tier's 5 s: the migration moved them, not the TTL

    connection = _connect(settings)
    try:
        channel = connection.channel()
        got = []
        while (message := channel.basic_get(queue.name, auto_ack=True))[0] is not None:
            got.append(
                (message[2].decode(), message[1].headers[ATTEMPT_HEADER], message[1].headers[PUBLISHED_AT_HEADER])
            )
        assert sorted(got) == sorted((f"r{i}", 2, 1_000 + i) for i in range(20))  # attempt and stamp kept
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # the old tier is gone
            channel.queue_declare(old, passive=True)
    finally:
        connection.close()
    assert migrate(settings) == []
