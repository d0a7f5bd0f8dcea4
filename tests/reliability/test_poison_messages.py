"""Hostile queue input: a message no writer can apply is dead-lettered, and the writer keeps consuming.

Whatever sits in a work queue — garbage, a write for an application deleted meanwhile — must never stop a
writer, or every message accepted after it waits in the queue forever while the writer looks healthy.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from chat_common.clients.broker import BrokerNodes
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.topology import Topology
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import own_system

UNKNOWN_APPLICATION = 4_000_000_000


@pytest.fixture(scope="module")
def poisoned() -> Iterator[tuple[System, Namespace]]:
    with own_system("poison") as system:
        yield system, system.namespace


def _publish(ns: Namespace, queue: str, body: bytes) -> None:
    connection = BrokerNodes.from_settings(ns.settings).connect_blocking()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def _dead_letters(ns: Namespace, queue: str) -> int:
    connection = BrokerNodes.from_settings(ns.settings).connect_blocking()
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


POISON = [
    ("chats", "not JSON", b"\xff\x00 not json"),
    ("chats", "chat of a deleted application", ChatUpsert(UNKNOWN_APPLICATION, 1, "orphan").encode()),
    ("messages", "message of a deleted application", MessageUpsert(UNKNOWN_APPLICATION, 1, 1, "orphan").encode()),
    ("messages", "wrong types", b'{"application_id": "x", "chat_number": [], "message_number": null}'),
]


@pytest.mark.parametrize(("queue", "what", "body"), POISON, ids=[p[1] for p in POISON])
def test_writer_keeps_consuming_after_a_poison_message(poisoned, queue, what, body, hostile_results):
    system, ns = poisoned
    topology = Topology(ns.settings.queue_prefix, ns.settings.writer_retry_delays_seconds)
    work = getattr(topology, queue)
    dead_before = _dead_letters(ns, work.dead_letter)
    api = Api(system.base_url)
    token = api.new_application("after poison")
    row = hostile_results.add(
        category="queue",
        input=what,
        request=f"published to the {queue} queue",
        expected="dead-lettered, writer keeps consuming",
        got=None,
        answered_by=f"{queue[:-1]}-writer",
        outcome="fail",
    )
    # Alone in its batch, so it carries the batch's highest delivery tag: acknowledging the batch up to that tag
    # after dead-lettering it once closed the writer's channel for good.
    _publish(ns, work.name, body)
    wait_for(lambda: _dead_letters(ns, work.dead_letter) > dead_before, timeout=10, what="the dead letter")
    chat = api.new_chat(token)
    api.wait_message(token, chat, api.new_message(token, chat, "written after the poison"), timeout=10)
    assert system.chat_writer.popen.poll() is None and system.message_writer.popen.poll() is None
    row.update(got="dead-lettered, writer kept consuming", outcome="pass")
