"""Every message answered 201 is persisted exactly once: redelivery, writer crashes, Redis losing its data."""

import threading
import time

import pika

from chat_common.clients.broker import BrokerNodes
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.topology import Topology
from chat_devtools.http import wait_for
from chat_devtools.load.clients import create_concurrently


def _publish(namespace, queue_name: str, body: bytes, copies: int = 1) -> None:
    connection = BrokerNodes.from_settings(namespace.settings).connect_blocking()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(copies):
            channel.basic_publish("", queue_name, body, pika.BasicProperties(delivery_mode=2), mandatory=True)
    finally:
        connection.close()


def test_same_queue_message_twice_gives_one_row(private_api, private_db, fresh_namespace):
    token = private_api.new_application("dup")
    chat = private_api.new_chat(token)
    number = private_api.new_message(token, chat, "original")
    private_api.wait_message(token, chat, number)
    app_id = private_db.scalar("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)", t=token)
    queue = Topology(fresh_namespace.settings.queue_prefix, fresh_namespace.settings.writer_retry_delays_seconds)
    # Redeliver the create (version 0) twice more: it must neither duplicate nor overwrite.
    _publish(fresh_namespace, queue.messages.name, MessageUpsert(app_id, chat, number, "replayed").encode(), copies=2)
    marker = private_api.new_message(token, chat, "marker")
    private_api.wait_message(token, chat, marker)
    time.sleep(0.5)
    assert private_db.messages_of(token, chat) == [(number, "original"), (marker, "marker")]


def _stream_messages(api, token, chats, seconds, accepted, stop):
    """Keep creating messages round-robin across chats; record every 201."""
    import requests

    session = requests.Session()
    i = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        chat = chats[i % len(chats)]
        body = f"stream-{threading.get_ident()}-{i}"
        try:
            resp = session.post(
                f"{api.base_url}/applications/{token}/chats/{chat}/messages", json={"body": body}, timeout=10
            )
        except requests.RequestException:
            resp = None
        if resp is not None and resp.status_code == 201:
            accepted.append((chat, resp.json()["message_number"], body))
        elif resp is not None:
            assert resp.status_code == 503, resp.text  # the only acceptable failure: "retry later"
        i += 1


def _run_stream(api, token, chats, seconds, disturb):
    accepted: list = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_stream_messages, args=(api, token, chats, seconds, accepted, stop)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    try:
        disturb()
    finally:
        for t in threads:
            t.join()
    return accepted


def _assert_exactly_once(db, token, accepted, timeout=60):
    by_chat: dict[int, dict[int, str]] = {}
    for chat, number, body in accepted:
        assert number not in by_chat.setdefault(chat, {}), f"number {number} handed out twice in chat {chat}"
        by_chat[chat][number] = body
    for chat, expected in by_chat.items():
        wait_for(lambda c=chat, e=expected: len(db.messages_of(token, c)) >= len(e), timeout=timeout, what="rows")
        stored = dict(db.messages_of(token, chat))
        missing = {n: b for n, b in expected.items() if stored.get(n) != b}
        assert not missing, f"{len(missing)} accepted messages not persisted as sent, e.g. {list(missing.items())[:3]}"
        extra = set(stored) - set(expected)
        assert not extra, f"rows nobody was told about: {sorted(extra)[:5]}"


def test_writer_killed_mid_stream_loses_and_duplicates_nothing(private_system, private_api, private_db):
    token = private_api.new_application("crashy")
    chats = [private_api.new_chat(token, f"c{i}") for i in range(3)]

    def disturb():
        for _ in range(3):
            time.sleep(1.0)
            private_system.message_writer.kill()  # SIGKILL: no chance to ack or clean up
            time.sleep(0.5)
            private_system.message_writer.start()
        private_system.chat_writer.kill()
        private_system.chat_writer.start()

    accepted = _run_stream(private_api, token, chats, 6, disturb)
    assert len(accepted) > 200
    _assert_exactly_once(private_db, token, accepted)


def test_redis_wiped_mid_run_numbering_continues_without_duplicates(
    private_system, private_api, private_db, fresh_namespace
):
    token = private_api.new_application("amnesia")
    chats = [private_api.new_chat(token, f"c{i}") for i in range(2)]

    def disturb():
        time.sleep(1.5)
        fresh_namespace.flush_redis()  # every key of this namespace: counters, epoch, heartbeats, dirty sets
        time.sleep(3.0)

    accepted = _run_stream(private_api, token, chats, 8, disturb)
    _assert_exactly_once(private_db, token, accepted)
    # Numbering continued after the wipe (not restarted at 1) and creates work again.
    later = private_api.new_message(token, chats[0], "after the wipe")
    assert later > max(n for c, n, _ in accepted if c == chats[0])
    new_chat = private_api.new_chat(token, "after the wipe")
    assert new_chat == 3


def test_bulk_creates_across_a_wipe_of_redis(private_api, private_db, fresh_namespace):
    token = private_api.new_application("bulk")
    chat = private_api.new_chat(token)
    url = f"{private_api.base_url}/applications/{token}/chats/{chat}/messages"
    first = create_concurrently(url, "body", 150, processes=2, prefix="before")
    fresh_namespace.flush_redis()
    second = create_concurrently(url, "body", 150, processes=2, prefix="after")
    numbers = [m["message_number"] for m in first + second]
    assert len(set(numbers)) == 300
    _assert_exactly_once(private_db, token, [(chat, m["message_number"], m["body"]) for m in first + second])
