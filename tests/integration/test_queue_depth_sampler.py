"""The writers' queue-depth sampler against the real broker: retry tiers of earlier versions are sampled while they
exist and left alone once gone (no passive declare, no broker warning every five seconds, no stale gauge)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from uuid import uuid4

import pika
import pytest
from prometheus_client import REGISTRY

from chat_common.wire.topology import Topology, WorkQueue
from chat_common.writing.consumer import LoopState
from chat_common.writing.consumer_hooks import QueueDepthSampler

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def connection() -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    yield connection
    connection.close()


@pytest.fixture
def queue(connection: pika.BlockingConnection) -> Iterator[WorkQueue]:
    """The message queue of a topology of the test's own, declared; every queue of it deleted afterwards."""
    topology = Topology(prefix=f"test_depth_{uuid4().hex[:8]}")
    work = topology.messages
    channel = connection.channel()
    work.declare(channel)
    yield work
    for name in (work.name, work.dead_letter, *work.retry_queues, *work.legacy_retry_queues):
        channel.queue_delete(name)


def depth(name: str) -> float | None:
    return REGISTRY.get_sample_value("chat_queue_messages", {"queue": name, "kind": "retry"})


def test_legacy_tiers_are_sampled_while_they_exist_then_left_alone(
    connection: pika.BlockingConnection, queue: WorkQueue, caplog: pytest.LogCaptureFixture
) -> None:
    kept, *missing = list(queue.legacy_retry_queues)
    channel = connection.channel()
    channel.queue_declare(kept, durable=True)  # left by an earlier version, holding a message
    channel.basic_publish("", kept, b"{}")
    sampler = QueueDepthSampler(every=0)
    state = LoopState("test", queue, 0, connection)

    sampler.on_iteration(state)
    assert sampler.gone == set(missing)
    assert depth(kept) == 1

    channel.queue_delete(kept)  # moved by python -m chat_common.ops.queue_migration
    sampler.on_iteration(state)
    assert sampler.gone == {kept, *missing}
    assert depth(kept) is None  # no stale last value

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sampler.on_iteration(state)
    assert not [r for r in caplog.records if "NOT_FOUND" in r.getMessage()]
    assert depth(queue.retry_queues[0]) == 0  # today's tiers are still sampled
