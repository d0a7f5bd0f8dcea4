"""Retry tiers and dead-letter queues as quorum queues lose nothing, even while the queue they feed is down.

Both ways out of a queue are dead-lettering: a retry tier's TTL expiry sends a message back to its work queue, and
a writer's reject sends it to ``<queue>.dead``. Out of a quorum queue that is at-most-once — a message dead-lettered
while its target queue cannot take it is dropped — unless the source queue says
``x-dead-letter-strategy: at-least-once`` (with ``x-overflow: reject-publish``), which chat_common.topology
declares: the source then keeps the message until the target confirmed it.

To make the target unavailable for a while without taking the source down, each target here is a quorum queue of
one member (``x-quorum-initial-group-size: 1``) on its own node, and that node is SIGKILLed while messages are
dead-lettered into it; the sources are the topology's own three-member queues on the other nodes. With the
strategy at-most-once this test lost all 300 retries (checked by hand while writing it); with ours, none. The
source resends what its target did not confirm after ``dead_letter_worker_publisher_confirm_timeout`` (3 minutes
by default; 5 s on the test nodes, see chat_devtools.rabbit_cluster).
"""

from __future__ import annotations

import time
import uuid

import pika
import pytest

from chat_common.batches import ATTEMPT_HEADER
from chat_common.topology import Topology
from chat_devtools.rabbit_cluster import RabbitCluster, RabbitNode

pytestmark = pytest.mark.slow

COUNT = 300
TTL_SECONDS = 2


def _channel(node: RabbitNode):
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    return connection, connection.channel()


def _drain_ids(node: RabbitNode, queue: str, expected: int, timeout: float = 40) -> list[int]:
    """Take every message of ``queue`` (through ``node``) until ``expected`` distinct ids arrived or time is up."""
    connection, channel = _channel(node)
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while len(set(ids)) < expected and time.monotonic() < deadline:
            method, _props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                connection.sleep(0.2)
                continue
            ids.append(int(body))
    finally:
        connection.close()
    return ids


def test_retry_tier_and_dead_letter_queue_lose_nothing_while_their_target_is_down(healthy_cluster: RabbitCluster):
    cluster = healthy_cluster
    n1, n2, n3 = cluster.nodes
    queue = Topology(f"cs_dlx_{uuid.uuid4().hex[:8]}", (TTL_SECONDS,)).messages
    retry_tier = queue.retry_queues[0]
    arguments = queue.arguments()
    assert arguments[retry_tier]["x-dead-letter-strategy"] == "at-least-once"
    assert arguments[queue.name]["x-dead-letter-strategy"] == "at-least-once"
    one_member = {"x-quorum-initial-group-size": 1}
    # A quorum queue's first leader is the node its declaring client is connected to.
    placement = {
        queue.name: (n1, {**arguments[queue.name], **one_member}),  # target of the retry tier
        retry_tier: (n2, arguments[retry_tier]),
        queue.dead_letter: (n3, {**arguments[queue.dead_letter], **one_member}),  # target of the work queue
    }
    for name, (node, args) in placement.items():
        connection, channel = _channel(node)
        channel.queue_declare(name, durable=True, arguments=args)
        connection.close()
    try:
        for name, (node, _) in placement.items():
            assert cluster.leader_of(name) is node, f"{name} is not led by {node.node}: the test would prove less"

        # 1. Retry tier -> work queue: the TTL expires while the work queue is down.
        connection, channel = _channel(n2)
        channel.confirm_delivery()
        for i in range(COUNT):
            properties = pika.BasicProperties(delivery_mode=2, headers={ATTEMPT_HEADER: 1})
            channel.basic_publish("", retry_tier, str(i).encode(), properties)
        connection.close()
        n1.kill()
        time.sleep(TTL_SECONDS + 2)
        n1.start().wait_ready()
        back = _drain_ids(n1, queue.name, COUNT)
        assert set(back) == set(range(COUNT)), f"{COUNT - len(set(back))} retries lost on their way back"

        # 2. Work queue -> dead-letter queue: every message rejected while the dead-letter queue is down.
        connection, channel = _channel(n1)
        channel.confirm_delivery()
        for i in range(COUNT):
            channel.basic_publish("", queue.name, str(i).encode(), pika.BasicProperties(delivery_mode=2))
        channel.basic_qos(prefetch_count=COUNT)
        tags = []
        for method, _props, _body in channel.consume(queue.name, inactivity_timeout=10):
            if method is None:
                break
            tags.append(method.delivery_tag)
            if len(tags) == COUNT:
                break
        assert len(tags) == COUNT
        n3.kill()
        for tag in tags:
            channel.basic_nack(tag, requeue=False)
        connection.sleep(2)
        channel.cancel()
        connection.close()
        n3.start().wait_ready()
        dead = _drain_ids(n3, queue.dead_letter, COUNT)
        assert set(dead) == set(range(COUNT)), f"{COUNT - len(set(dead))} rejected messages lost on their way"
        # The source kept each message until the target confirmed it; none is left behind in the work queue.
        connection, channel = _channel(n1)
        assert channel.queue_declare(queue.name, passive=True).method.message_count == 0
        connection.close()
    finally:
        for node in cluster.nodes:
            if not node.running:
                node.start().wait_ready()
        connection, channel = _channel(n1)
        for name in placement:
            channel.queue_delete(name)
        connection.close()
