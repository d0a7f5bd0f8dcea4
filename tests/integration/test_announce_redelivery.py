"""A writer that commits a batch and dies before announcing it: the redelivered batch announces the rows again.

The crash is made in-process, against the real MariaDB, Redis and RabbitMQ and the API as a real process with an
open stream: the message-writer process is stopped, a message is created through the API (numbered, published to the
real work queue), then the test takes that delivery from the queue and runs the real ``MessageBatchWriter`` on it
with no announcer — the commit happens, the announcement does not (the writer "died" there) — and drops its channel
without acknowledging (the broker requeues the message, flagged ``redelivered``). The stream must not have the
message yet: it is the newest of its chat, so no later number opens a hole that would make the stream read MySQL.
Then the redelivery is taken and handled by a writer with the production announcer: the row is already stored with
the same version, and the stream must get it now. Without the re-announcement the client would wait for the next
message of the chat.

An older edit that arrives after a newer one (out of order, or redelivered late) is stored as nothing and must be
announced as nothing: a stream would otherwise show the older body as the latest edit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from chat_common.clients.broker import BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.wire.announcements import Announcer, listened_chats
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology, announcements_exchange
from chat_common.writing.batches import ATTEMPT_HEADER, Delivery
from chat_common.writing.writer import WriterContext
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.sse import Listener, stream_url
from message_writer.handler import MessageBatchWriter
from tests.conftest import own_system


@pytest.fixture(scope="module")
def stopped_writer() -> Iterator[tuple[System, Api, Namespace]]:
    """A system whose message-writer is stopped: the test is the message-writer."""
    with own_system("redeliv", api_workers=1) as system:
        system.message_writer.stop()
        yield system, Api(system.base_url), system.namespace


class Writer:
    """The real handler and announcer over the namespace's MariaDB, Redis and broker; ``take`` gets deliveries."""

    def __init__(self, ns: Namespace, announce: bool) -> None:
        settings = ns.settings
        self.connection = BrokerNodes.from_settings(settings).connect_blocking()
        self.channel = self.connection.channel()
        self.queue = Topology.from_settings(settings).messages.name
        keys = RedisKeys(settings.redis_key_prefix)
        self.redis = sync_client(settings.redis_url)
        self.engine = make_engine(settings.database_url, pool_size=1)
        announcer = None
        if announce:
            listened = listened_chats(self.redis, keys.stream_rooms)
            announcer = Announcer(announcements_exchange(settings.queue_prefix), listened)
            announcer.attach(self.channel)
        self.handler = MessageBatchWriter(WriterContext(settings, self.engine, self.redis, keys, announcer))

    def take(self, count: int, timeout: float = 10) -> list[Delivery]:
        deliveries: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while len(deliveries) < count:
            assert time.monotonic() < deadline, f"only {len(deliveries)} of {count} deliveries in the queue"
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=False)
            if method is None:
                time.sleep(0.05)
                continue
            attempt = (properties.headers or {}).get(ATTEMPT_HEADER, 0)
            deliveries.append(Delivery(body, method.delivery_tag, method.redelivered, attempt))
        return deliveries

    def ack(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self.channel.basic_ack(delivery.delivery_tag)

    def close(self) -> None:
        """Drop the connection: what was not acknowledged goes back to the queue, flagged redelivered."""
        self.connection.close()
        self.redis.close()
        self.engine.dispose()


def test_a_batch_committed_but_not_announced_is_announced_on_redelivery(stopped_writer):
    _, api, ns = stopped_writer
    token, chat = api.new_tenant_with_chat("redelivered")
    listener = Listener(stream_url(api.base_url, token, chat, after=0)).start()
    try:
        assert listener.status == 200
        time.sleep(0.5)  # the stream's chat is listed for the writers and bound
        assert api.new_message(token, chat, "committed, then the writer died") == 1

        crashed = Writer(ns, announce=False)
        first = crashed.take(1)
        assert not first[0].redelivered
        result = crashed.handler(first)
        assert not result.retry and not result.dead
        assert api.get(f"/applications/{token}/chats/{chat}/messages/1").status_code == 200  # committed
        crashed.close()  # died before announcing and acknowledging

        time.sleep(2.0)
        assert listener.numbers() == [], "the stream got the row without an announcement: nothing is tested"

        writer = Writer(ns, announce=True)
        try:
            again = writer.take(1)
            assert again[0].redelivered and again[0].body == first[0].body
            writer.handler(again)
            writer.ack(again)
            listener.wait_numbers([1], timeout=5)  # from the re-announcement (the gap rule has no hole to read)
            assert listener.events[-1].data == {"message_number": 1, "body": "committed, then the writer died"}
        finally:
            writer.close()
    finally:
        listener.close()


def test_an_older_edit_arriving_after_a_newer_one_is_not_announced(stopped_writer):
    _, api, ns = stopped_writer
    token, chat = api.new_tenant_with_chat("stale edit")
    assert api.new_message(token, chat, "created") == 1
    writer = Writer(ns, announce=True)
    try:
        created = writer.take(1)
        writer.handler(created)
        writer.ack(created)
        app_id = MessageUpsert.decode(created[0].body).application_id
        newer = MessageUpsert(app_id, chat, 1, "newer", version=20)
        older = MessageUpsert(app_id, chat, 1, "older", version=10)
        writer.handler([Delivery(newer.encode(), 0, False, 0)])  # stored before anyone streams the chat
        # A new stream: its worker has not seen the newer edit, so only the writer can keep the older one out.
        listener = Listener(stream_url(api.base_url, token, chat, after=1)).start()
        try:
            time.sleep(0.5)  # listed for the writers and bound
            writer.handler([Delivery(older.encode(), 0, True, 0)])  # late (redelivered): the upsert keeps "newer"
            writer.handler([Delivery(newer.encode(), 0, True, 0)])  # the newer one redelivered: announced again
            listener.wait_until(lambda s: any(e.event == "edit" for e in s.events), 5, "the newer edit")
            time.sleep(0.5)
            edits = [e.data for e in listener.events if e.event == "edit"]
            assert edits == [{"message_number": 1, "body": "newer", "version": 20}]
            assert api.get(f"/applications/{token}/chats/{chat}/messages/1").json()["body"] == "newer"
        finally:
            listener.close()
    finally:
        writer.close()
