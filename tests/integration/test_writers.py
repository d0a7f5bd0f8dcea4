"""Writer failure paths: invalid payloads dead-lettered, early messages retried, deleted applications dropped."""

import time

import pika
import pytest
import requests
from sqlalchemy import text

from chat_common.clients.broker import BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from chat_common.wire.keys import RedisKeys, parse_dirty_marks
from chat_common.wire.topology import Topology
from chat_common.writing.batches import ATTEMPT_HEADER, DUE_AT_HEADER, stamp_header
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT


def _channel(namespace):
    connection = BrokerNodes.from_settings(namespace.settings).connect_blocking()
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _ready(namespace, queue: str) -> int:
    connection, channel = _channel(namespace)
    try:
        return channel.queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def _publish(namespace, queue: str, *bodies: bytes) -> None:
    connection, channel = _channel(namespace)
    try:
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


@pytest.fixture
def topology(fresh_namespace):
    return Topology(fresh_namespace.settings.queue_prefix, fresh_namespace.settings.writer_retry_delays_seconds)


@pytest.mark.parametrize("which", ["chats", "messages"])
def test_unparseable_and_invalid_payloads_go_to_the_dead_letter_queue(private_system, fresh_namespace, topology, which):
    queue = getattr(topology, which)
    bad = [
        b"\x00\xff not json",
        b"[1, 2]",
        b'{"v": 99}',
        b'{"v": 1, "application_id": "1", "chat_number": 1, "message_number": 1, "body": "x", "name": "x"}',
        b'{"v": 1, "application_id": 1, "chat_number": -4, "message_number": 1, "body": "x", "name": "x"}',
        b'{"v": 1, "application_id": 1, "chat_number": 1, "message_number": 1, "body": "", "name": ""}',
    ]
    _publish(fresh_namespace, queue.name, *bad)
    wait_for(lambda: _ready(fresh_namespace, queue.dead_letter) == len(bad), timeout=20, what="dead-lettered")
    # The writer still consumes: the batch's highest tag was dead-lettered, which must not cost it its channel.
    private_api = Api(private_system.base_url)
    token = private_api.new_application("after poison")
    chat = private_api.new_chat(token)
    number = private_api.new_message(token, chat, "still flowing")
    private_api.wait_message(token, chat, number)
    assert private_system.message_writer.popen.poll() is None and private_system.chat_writer.popen.poll() is None


def test_message_before_its_chat_row_is_retried_not_dropped(
    private_system, private_api, private_db, fresh_namespace, topology
):
    token = private_api.new_application("early")
    app_id = private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)
    # The message arrives first; its chat row is only written 2 s later.
    _publish(fresh_namespace, topology.messages.name, MessageUpsert(app_id, 1, 1, "I was early").encode())
    time.sleep(2)
    assert private_db.messages_of(token, 1) == []
    _publish(fresh_namespace, topology.chats.name, ChatUpsert(app_id, 1, "late chat").encode())
    wait_for(lambda: private_db.messages_of(token, 1) == [(1, "I was early")], timeout=20, what="retried message")
    assert _ready(fresh_namespace, topology.messages.dead_letter) == 0


def test_writes_for_a_deleted_application_are_dead_lettered(private_system, private_db, fresh_namespace, topology):
    _publish(fresh_namespace, topology.chats.name, ChatUpsert(987654, 1, "orphan").encode())
    _publish(fresh_namespace, topology.messages.name, MessageUpsert(987654, 1, 1, "orphan").encode())
    wait_for(lambda: _ready(fresh_namespace, topology.chats.dead_letter) == 1, timeout=20, what="chat dead-lettered")
    wait_for(lambda: _ready(fresh_namespace, topology.messages.dead_letter) == 1, timeout=20, what="msg dead-lettered")
    assert private_db.scalar("SELECT COUNT(*) FROM chats") == 0


def test_older_edit_never_overwrites_a_newer_one(private_system, private_api, private_db, fresh_namespace, topology):
    token = private_api.new_application("versions")
    chat = private_api.new_chat(token)
    number = private_api.new_message(token, chat, "v0")
    private_api.wait_message(token, chat, number)
    app_id = private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)
    newer = MessageUpsert(app_id, chat, number, "newer", version=2_000_000_000_000_000)
    older = MessageUpsert(app_id, chat, number, "older", version=1_000_000_000_000_000)
    _publish(fresh_namespace, topology.messages.name, newer.encode(), older.encode())
    wait_for(lambda: private_db.messages_of(token, chat) == [(number, "newer")], timeout=10, what="newer edit")
    time.sleep(0.5)
    assert private_db.messages_of(token, chat) == [(number, "newer")]


def test_writer_stops_cleanly_on_sigterm(private_system):
    assert private_system.message_writer.stop() == 0
    assert private_system.chat_writer.stop() == 0
    log = private_system.message_writer.log_path.read_text()
    assert "consumer stopped" in log


def test_the_writer_marks_each_chat_dirty_with_its_application(private_api, private_db, fresh_namespace):
    """The count sync's marks name the tenant (``<application id>:<chat id>``): its recount is keyed by it."""
    token = private_api.new_application("marks")
    chat = private_api.new_chat(token)
    private_api.wait_message(token, chat, private_api.new_message(token, chat, "hello"))
    app_id = private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)
    chat_id = private_db.scalar("SELECT id FROM chats WHERE application_id = :a AND number = :n", a=app_id, n=chat)
    client = sync_client(fresh_namespace.settings.redis_url)
    try:
        marks = client.smembers(RedisKeys(fresh_namespace.settings.redis_key_prefix).dirty_chats)
    finally:
        client.close()
    assert marks == {f"{app_id}:{chat_id}".encode()}
    assert parse_dirty_marks(list(marks)) == ([chat_id], {chat_id: app_id})


# -- Retry tiers: the writers drain them (chat_common.writing.retry_tiers)
# ----------------------------------------------
def _publish_with(namespace, queue: str, body: bytes, headers: dict) -> None:
    connection, channel = _channel(namespace)
    try:
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, headers=headers), mandatory=True)
    finally:
        connection.close()


def _status(system) -> dict:
    return requests.get(f"{system.base_url}/status", timeout=10).json()


def test_a_tier_message_held_by_a_killed_writer_comes_back_at_its_due_time_through_the_next_one():
    namespace = Namespace.create("held", writer_retry_delays_seconds=(1, 30))
    system = System(namespace, LOG_ROOT / namespace.name)
    try:
        system.start()
        api = Api(system.base_url)
        token, chat = api.new_tenant_with_chat("held")
        engine = make_engine(namespace.settings.database_url, pool_size=1)
        with engine.connect() as conn:
            app_id = conn.execute(
                text("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)"), {"t": token}
            ).scalar_one()
        engine.dispose()
        tier = Topology.from_settings(namespace.settings).messages.retry(2)  # the 30 s tier
        due = time.time() + 8
        body = MessageUpsert(app_id, chat, 1, "held through a crash").encode()
        _publish_with(namespace, tier, body, {ATTEMPT_HEADER: 2, DUE_AT_HEADER: stamp_header(due)})
        wait_for(lambda: _ready(namespace, tier) == 0, timeout=5, what="the writer holding it")
        system.message_writer.kill()  # holding it unacknowledged: the broker has it again
        wait_for(lambda: _ready(namespace, tier) == 1, timeout=10, what="the tier message back in its tier")
        system.message_writer.start()

        def stored() -> float | None:
            return time.time() if api.get(f"/applications/{token}/chats/{chat}/messages/1").status_code == 200 else None

        at = wait_for(stored, timeout=30, what="the message stored")
        assert at >= due  # not before its due time
        assert at < due + 5  # and at it: the next writer kept its due time, it did not wait 30 s afresh
    finally:
        system.stop()
        namespace.destroy()


def test_a_ttl_tier_of_an_earlier_version_is_drained_by_the_writers(
    private_system, private_api, private_db, fresh_namespace, topology
):
    token, chat = private_api.new_tenant_with_chat("legacy")
    app_id = private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)
    old = f"{topology.messages.name}.retry.{topology.messages.retry_delays_seconds[0]}s"
    assert old in topology.messages.legacy_retry_queues
    connection, channel = _channel(fresh_namespace)
    # As 0.1 declared it, but with a TTL no test waits for: only a writer draining it can bring the message back.
    args = {"x-message-ttl": 600_000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": topology.messages.name}
    channel.queue_declare(old, durable=True, arguments={"x-queue-type": "quorum", **args})
    connection.close()
    body = MessageUpsert(app_id, chat, 1, "from an old tier").encode()
    _publish_with(fresh_namespace, old, body, {ATTEMPT_HEADER: 1})  # an old writer's retry: no due time
    private_system.message_writer.restart()  # drains the old tiers it finds when it connects
    wait_for(lambda: private_db.messages_of(token, chat) == [(1, "from an old tier")], timeout=20, what="stored")


def test_status_shows_an_undrained_tier_and_parked_dead_letters(private_system, fresh_namespace, topology):
    wait_for(lambda: _status(private_system)["checks"]["retry_tiers"] == "ok", timeout=10, what="the first snapshot")
    _publish(fresh_namespace, topology.chats.name, b"not json")  # dead-lettered by the chat-writer
    private_system.chat_writer.stop()
    tier = topology.chats.retry(1)
    _publish_with(fresh_namespace, tier, b"{}", {ATTEMPT_HEADER: 1, DUE_AT_HEADER: stamp_header(time.time())})

    def seen() -> tuple[int, dict] | None:
        # Code and body of one answer: each API worker keeps its own short-lived snapshot of the queues.
        resp = requests.get(f"{private_system.base_url}/status", timeout=10)
        status = resp.json()
        return (resp.status_code, status) if status["checks"]["retry_tiers"] == "undrained" else None

    code, status = wait_for(seen, timeout=15, interval=0.5, what="/status noticing the tier nobody drains")
    assert code == 503
    assert status["details"]["retry_tiers"]["tiers"][tier] == {"messages": 1, "drainers": 0}
    assert status["checks"]["dead_letters"] == "holding"  # parked for a human: shown, not a fault
    assert status["details"]["dead_letters"]["queues"][topology.chats.dead_letter] == 1
    private_system.chat_writer.start()
    wait_for(lambda: _status(private_system)["checks"]["retry_tiers"] == "ok", timeout=20, what="drained again")
