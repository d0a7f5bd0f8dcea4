"""Live streams through faults: the message-writer SIGKILLed and RabbitMQ SIGKILLed while clients stream.

On the private MariaDB/Redis/RabbitMQ of tests/chaos (the shared broker is never touched). Whatever happens, a
stream must show exactly the messages that are stored, in number order, each once: live, for a client that stayed
connected, and after a resume with Last-Event-ID for one that reconnected.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from sqlalchemy import text

from chat_devtools.http import wait_for
from chat_devtools.sse import Listener, stream_url
from tests.chaos.conftest import deploy, teardown

pytestmark = pytest.mark.slow


@pytest.fixture
def streaming_deployment(infra, monkeypatch):
    # A short gap rule: numbers burned by the broker outage (503 to their create) are skipped after 2 s.
    monkeypatch.setenv("STREAM_GAP_SECONDS", "2")
    monkeypatch.setenv("STREAM_HEARTBEAT_SECONDS", "1")
    d = deploy(infra)
    yield d
    teardown(d)


def _create_for(api, token: str, chat: int, seconds: float, accepted: list[int], stop: threading.Event) -> None:
    session = requests.Session()
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and not stop.is_set():
        try:
            resp = session.post(
                f"{api.base_url}/applications/{token}/chats/{chat}/messages", json={"body": f"b{i}"}, timeout=10
            )
        except requests.RequestException:
            resp = None
        if resp is not None and resp.status_code == 201:
            accepted.append(resp.json()["message_number"])
        i += 1
        time.sleep(0.01)


def _stored(d, token: str, chat: int) -> list[int]:
    with d.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT m.number FROM messages m JOIN chats c ON c.id = m.chat_id JOIN applications a"
                    " ON a.id = c.application_id WHERE a.token_digest = SHA2(:t, 256) AND c.number = :c"
                    " ORDER BY m.number"
                ),
                {"t": token, "c": chat},
            ).scalars()
        )


def _scenario(d, fault) -> None:
    api = d.api
    token, chat = api.new_tenant_with_chat("stream-chaos")
    url = stream_url(api.base_url, token, chat, after=0)
    live = Listener(url).start()  # stays connected through the fault
    early = Listener(url).start()  # goes away before the fault and resumes after it
    accepted: list[int] = []
    stop = threading.Event()
    load = threading.Thread(target=_create_for, args=(api, token, chat, 8.0, accepted, stop))
    load.start()
    try:
        time.sleep(1.5)
        early.close()
        fault(d)
        load.join(30)
        assert accepted, "no create was accepted"
        # Every accepted message is stored (the writers' guarantee); a 503 may still have been stored too.
        wait_for(lambda: set(accepted) <= set(_stored(d, token, chat)), timeout=60, what="accepted rows stored")
        time.sleep(1.0)
        stored = _stored(d, token, chat)
        live.wait_until(lambda s: s.numbers()[-1:] == stored[-1:], timeout=30, what=f"up to {stored[-1]}")
        resumed = Listener(stream_url(api.base_url, token, chat), last_event_id=early.last_id or "0").start()
        expected_after = [n for n in stored if n > int(early.last_id or 0)]
        resumed.wait_numbers(expected_after, timeout=30)
        resumed.close()
        time.sleep(0.5)
        assert live.numbers() == stored, f"live stream {live.numbers()} != stored {stored}"
        assert early.numbers() + resumed.numbers() == stored
    finally:
        stop.set()
        load.join(30)
        live.close()


def _kill_message_writer(d) -> None:
    d.system.message_writer.kill()
    time.sleep(2.0)
    d.system.message_writer.start()


def _kill_broker(d) -> None:
    d.infra.rabbitmq.kill()
    time.sleep(3.0)
    d.infra.rabbitmq.start()
    d.system.wait_ready(timeout=60)


def test_message_writer_killed_while_streaming_loses_nothing(streaming_deployment):
    _scenario(streaming_deployment, _kill_message_writer)


def test_broker_killed_while_streaming_loses_nothing(streaming_deployment):
    _scenario(streaming_deployment, _kill_broker)
