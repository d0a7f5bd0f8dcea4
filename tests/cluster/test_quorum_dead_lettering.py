"""The dead-letter queue as a quorum queue loses nothing, even while it is down when messages are rejected into it.

A writer's reject sends a message to ``<queue>.dead`` by dead-lettering. Out of a quorum queue that is at-most-once
— a message dead-lettered while its target queue cannot take it is dropped — unless the source queue says
``x-dead-letter-strategy: at-least-once`` (with ``x-overflow: reject-publish``), which chat_common.wire.topology
declares: the source then keeps the message until the target confirmed it. (Retry tiers used to be dead-lettering
too, TTL expiry back into the work queue; they are drained by the writers now, see chat_common.writing.retry_tiers and
test_rabbit_failover.py.)

To make the target unavailable for a while without taking the source down, the dead-letter queue here is a quorum
queue of one member (``x-quorum-initial-group-size: 1``) on its own node, and that node is SIGKILLed while messages
are rejected into it; the work queue is the topology's own three-member queue led by another node. With the
strategy at-most-once this test lost all 300 rejected messages (checked by hand while writing it); with ours, none.
The source resends what its target did not confirm after ``dead_letter_worker_publisher_confirm_timeout`` (3
minutes by default; 5 s on the test nodes, see chat_devtools.rabbit_cluster).
"""

from __future__ import annotations

import time
import uuid

import pika
import pytest

from chat_common.clients.broker import BrokerNodes
from chat_common.wire.topology import Topology
from chat_devtools.rabbit_cluster import RabbitCluster, RabbitNode

pytestmark = pytest.mark.slow

COUNT = 300


def _channel(node: RabbitNode):
    connection = BrokerNodes(node.url).connect_blocking()
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


def test_the_dead_letter_queue_loses_nothing_while_it_is_down(healthy_cluster: RabbitCluster):
    cluster = healthy_cluster
    n1, _, n3 = cluster.nodes
    queue = Topology(f"cs_dlx_{uuid.uuid4().hex[:8]}", (1,)).messages
    arguments = queue.arguments()
    assert arguments[queue.name]["x-dead-letter-strategy"] == "at-least-once"
    one_member = {"x-quorum-initial-group-size": 1}
    # A quorum queue's first leader is the node its declaring client is connected to.
    placement = {
        queue.name: (n1, arguments[queue.name]),
        queue.dead_letter: (n3, {**arguments[queue.dead_letter], **one_member}),  # target of the work queue
    }
    for name, (node, args) in placement.items():
        connection, channel = _channel(node)
        channel.queue_declare(name, durable=True, arguments=args)
        connection.close()
    try:
        for name, (node, _) in placement.items():
            assert cluster.leader_of(name) is node, f"{name} is not led by {node.node}: the test would prove less"

        # Every message rejected while the dead-letter queue is down.
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
