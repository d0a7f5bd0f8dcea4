"""Webhook deliveries end to end on the real MariaDB: the real writers record events, the real dispatcher (in this
process, on its own event loop) delivers them to real local HTTP receivers, which verify every delivery with the
Standard Webhooks reference library (tests/integration/webhook_kit.py)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from tests.integration.test_event_log import Reader, Writers
from tests.integration.webhook_kit import (
    InProcessDispatcher,
    Receiver,
    add_endpoint,
    assert_chat_order,
    endpoint_row,
    event_ids,
    test_config,
    wait_until,
)
from webhook_dispatcher.signing import new_secret


@pytest.fixture
def writers(fresh_namespace) -> Iterator[Writers]:
    w = Writers(fresh_namespace)
    yield w
    w.close()


@pytest.fixture
def dispatcher(fresh_namespace) -> Iterator[InProcessDispatcher]:
    running = InProcessDispatcher(test_config(fresh_namespace))
    yield running
    running.stop()


def _chats(writers: Writers, app: int, chats: int, messages: int) -> None:
    writers.chats(writers.deliveries(*(ChatUpsert(app, c, f"chat {c}") for c in range(1, chats + 1))))
    for m in range(1, messages + 1):
        writers.messages(writers.deliveries(*(MessageUpsert(app, c, m, f"c{c} m{m}") for c in range(1, chats + 1))))


def test_every_event_arrives_signed_in_order_per_chat_as_the_api_shows_it(writers, fresh_namespace, dispatcher):
    app = writers.new_application()
    receiver = Receiver()
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.token_sealing_key, app, receiver.url)
    receiver.secrets = [endpoint.secret]
    _chats(writers, app, chats=4, messages=8)
    expected = event_ids(writers.engine, app)
    wait_until(lambda: set(receiver.ids()) >= {i for i, _ in expected}, 20, "every event delivered")
    assert receiver.unverified == [] and len(receiver.received) >= len(expected)
    assert_chat_order(receiver.first_arrivals())
    # The body: Standard Webhooks' envelope around the event exactly as GET /applications/{token}/events shows it.
    api = {str(e.position): e.public() for e in Reader(fresh_namespace).page(app, None, limit=100).events}
    for got in receiver.first_arrivals():
        payload = got.payload
        assert payload["data"] == api[payload["data"]["id"]]
        assert payload["type"] == payload["data"]["type"] and payload["timestamp"] == payload["data"]["committed_at"]
        assert got.message_id == f"evt_{payload['data']['id']}" and got.path == "/hooks/chat?key=query-secret"
    wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["position"] >= expected[-1][0], 5, "position moved")
    row = endpoint_row(writers.engine, endpoint.id)
    assert row["state"] == "healthy" and row["lease_owner"] == dispatcher.config.owner


def test_during_a_rotation_both_secrets_sign_and_either_one_verifies(writers, fresh_namespace, dispatcher):
    app = writers.new_application()
    old, new = new_secret(24), new_secret(64)
    holding_old, holding_new = Receiver(secrets=[old]), Receiver(secrets=[new])
    key = fresh_namespace.settings.token_sealing_key
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    for name, receiver in (("old", holding_old), ("new", holding_new)):
        add_endpoint(
            writers.engine,
            key,
            app,
            receiver.url,
            name=name,
            secret=new,
            previous_secret=old,
            previous_expires_at=later,
        )
    _chats(writers, app, chats=1, messages=3)
    for receiver in (holding_old, holding_new):
        wait_until(lambda r=receiver: len(r.received) >= 4, 20, "deliveries")
        assert receiver.unverified == []
        assert all(len(r.signature.split(" ")) == 2 for r in receiver.received)
    # Once the previous secret expired, only the new one signs.
    gone = Receiver(secrets=[new])
    add_endpoint(
        writers.engine,
        key,
        app,
        gone.url,
        name="expired",
        secret=new,
        previous_secret=old,
        previous_expires_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1),
    )
    wait_until(lambda: len(gone.received) >= 4, 20, "deliveries")
    assert gone.unverified == [] and all(" " not in r.signature for r in gone.received)
