"""Webhook deliveries end to end on the real MariaDB: the real writers record events, the real dispatcher (in this
process, on its own event loop) delivers them to real local HTTP receivers, which verify every delivery with the
Standard Webhooks reference library (tests/integration/webhook_kit.py)."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from tests.integration.test_event_log import Reader, Writers
from tests.integration.webhook_kit import (
    InProcessDispatcher,
    Received,
    Receiver,
    add_endpoint,
    assert_chat_order,
    endpoint_row,
    event_ids,
    held_rows,
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


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Makes receivers, and closes them all when the test ends."""
    made: list[Receiver] = []

    def make(**options) -> Receiver:
        made.append(Receiver(**options))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


def _outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("chat_webhook_deliveries_total", {"outcome": outcome}) or 0.0


def _chats(writers: Writers, app: int, chats: int, messages: int) -> None:
    writers.chats(writers.deliveries(*(ChatUpsert(app, c, f"chat {c}") for c in range(1, chats + 1))))
    for m in range(1, messages + 1):
        writers.messages(writers.deliveries(*(MessageUpsert(app, c, m, f"c{c} m{m}") for c in range(1, chats + 1))))


def test_every_event_arrives_signed_in_order_per_chat_as_the_api_shows_it(
    writers, fresh_namespace, dispatcher, receivers
):
    app = writers.new_application()
    receiver = receivers()
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
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


def test_during_a_rotation_both_secrets_sign_and_either_one_verifies(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    old, new = new_secret(24), new_secret(64)
    holding_old, holding_new = receivers(secrets=[old]), receivers(secrets=[new])
    key = fresh_namespace.settings.webhook_sealing_key
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
    gone = receivers(secrets=[new])
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


# -- what answers mean ------------------------------------------------------------------------------------------------
def test_410_disables_the_endpoint_and_nothing_more_is_sent(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    receiver = receivers(answer=lambda _: (410, {}, b"", 0.0))
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    _chats(writers, app, chats=1, messages=0)
    wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["state"] == "disabled", 10, "disabled")
    row = endpoint_row(writers.engine, endpoint.id)
    assert "410" in row["disabled_reason"] and row["disabled_at"] is not None and row["lease_owner"] is None
    count = len(receiver.received)
    _chats(writers, app, chats=3, messages=2)
    time.sleep(1.5)  # several head moves and lease rounds: a disabled endpoint is not claimed again
    assert len(receiver.received) == count == 1


def test_a_client_error_gives_that_event_up_and_the_chat_goes_on(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    refused_body = "c1 m2"

    def answer(got: Received) -> tuple:
        resource = got.payload["data"]["resource"] or {}
        return (422 if resource.get("body") == refused_body else 204), {}, b"", 0.0

    receiver = receivers(answer=answer)
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    given_up = _outcomes("given_up")
    _chats(writers, app, chats=2, messages=4)
    expected = event_ids(writers.engine, app)
    wait_until(lambda: set(receiver.ids()) >= {i for i, _ in expected}, 10, "every event tried")
    time.sleep(1.0)  # longer than the first retry step: a 422 is not retried
    ids = receiver.ids()
    assert sorted(ids) == sorted(i for i, _ in expected)  # each exactly once, the refused one included
    assert_chat_order(receiver.first_arrivals())
    assert _outcomes("given_up") == given_up + 1
    assert held_rows(writers.engine, endpoint.id) == []


def test_429_waits_as_long_as_retry_after_says(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    attempts: dict[str, int] = {}

    def answer(got: Received) -> tuple:
        attempts[got.message_id] = attempts.get(got.message_id, 0) + 1
        if got.payload["data"]["type"] == "chat.created" and attempts[got.message_id] == 1:
            return 429, {"Retry-After": "2"}, b"slow down", 0.0
        return 204, {}, b"", 0.0

    receiver = receivers(answer=answer)
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    _chats(writers, app, chats=1, messages=3)
    expected = [i for i, _ in event_ids(writers.engine, app)]
    wait_until(lambda: set(receiver.ids()) >= set(expected), 10, "every event delivered")
    first, second = [r for r in receiver.received if r.event_id == expected[0]][:2]
    assert second.at - first.at >= 1.9  # Retry-After: 2, not the schedule's 0.3 s
    # The chat's later events waited behind it: first arrivals in id order, none before the retried one.
    assert [r.event_id for r in receiver.first_arrivals()] == expected
    assert [r.event_id for r in receiver.received] == [expected[0], *expected]
    wait_until(lambda: held_rows(writers.engine, endpoint.id) == [], 5, "nothing held")


# -- egress -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_loopback_is_refused_without_the_allow_list_and_never_connected(writers, fresh_namespace, receivers, host):
    strict = InProcessDispatcher(test_config(fresh_namespace, egress=EgressPolicy(allow_http=True)))
    try:
        app = writers.new_application()
        receiver = receivers()
        url = receiver.url.replace("127.0.0.1", host)
        endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, url)
        refused = _outcomes("refused")
        _chats(writers, app, chats=1, messages=2)
        wait_until(lambda: _outcomes("refused") >= refused + 3, 10, "three refusals")
        wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["last_error"], 5, "the error recorded")
        row = endpoint_row(writers.engine, endpoint.id)
        assert row["state"] == "failing" and "refused" in row["last_error"] and "loopback" in row["last_error"]
        assert "query-secret" not in row["last_error"]
        assert receiver.received == [] and receiver.connections == 0
    finally:
        strict.stop()


def test_redirects_are_not_followed_and_not_retried(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    elsewhere = receivers()
    receiver = receivers(answer=lambda _: (302, {"Location": elsewhere.url}, b"", 0.0))
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    _chats(writers, app, chats=1, messages=2)
    expected = [i for i, _ in event_ids(writers.engine, app)]
    wait_until(lambda: set(receiver.ids()) >= set(expected), 10, "every event tried")
    time.sleep(1.0)
    assert receiver.ids() == expected and elsewhere.received == [] and elsewhere.connections == 0
    wait_until(lambda: "302" in (endpoint_row(writers.engine, endpoint.id)["last_error"] or ""), 5, "the 302 noted")
    assert held_rows(writers.engine, endpoint.id) == []


def test_an_answer_larger_than_the_limit_breaks_nothing(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    receiver = receivers(answer=lambda _: (200, {}, b"x" * (2 << 20), 0.0))
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    _chats(writers, app, chats=2, messages=3)
    expected = [i for i, _ in event_ids(writers.engine, app)]
    wait_until(lambda: set(receiver.ids()) >= set(expected), 10, "every event delivered")
    wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["last_success_at"] is not None, 5, "success noted")
    assert endpoint_row(writers.engine, endpoint.id)["state"] == "healthy"
    assert sorted(set(receiver.ids())) == expected


# -- replay and isolation ---------------------------------------------------------------------------------------------
def test_a_replay_moves_the_position_back_and_the_events_come_again(writers, fresh_namespace, dispatcher, receivers):
    app = writers.new_application()
    receiver = receivers()
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    _chats(writers, app, chats=2, messages=2)
    expected = [i for i, _ in event_ids(writers.engine, app)]
    wait_until(lambda: set(receiver.ids()) >= set(expected), 10, "every event delivered")
    wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["position"] >= expected[-1], 5, "position moved")
    with writers.engine.begin() as conn:  # what the admin side's replay does
        conn.execute(
            text("UPDATE webhook_endpoints SET position = :p WHERE id = :e"), {"p": expected[1], "e": endpoint.id}
        )
        conn.execute(text("DELETE FROM webhook_held WHERE endpoint_id = :e"), {"e": endpoint.id})
    wait_until(lambda: len(receiver.ids()) >= len(expected) * 2 - 2, 10, "the replayed events")
    again = receiver.received[len(expected) :]
    assert sorted(r.event_id for r in again) == expected[2:]
    assert_chat_order(again)


def test_a_slow_endpoint_does_not_slow_another_tenants(writers, fresh_namespace, dispatcher, receivers):
    slow_app, fast_app = writers.new_application("slow"), writers.new_application("fast")
    key = fresh_namespace.settings.webhook_sealing_key
    slow = receivers(answer=lambda _: (204, {}, b"", 5.0))
    fast = receivers()
    endpoints = [add_endpoint(writers.engine, key, app, r.url).id for app, r in ((slow_app, slow), (fast_app, fast))]
    owner = dispatcher.config.owner
    wait_until(lambda: all(endpoint_row(writers.engine, e)["lease_owner"] == owner for e in endpoints), 5, "claimed")
    _chats(writers, slow_app, chats=20, messages=2)  # 60 events at 5 s each, 16 at a time: ~20 s of work
    wait_until(lambda: len(slow.received) >= 16, 5, "the slow endpoint busy")
    for chat in range(1, 31):
        writers.chats(writers.deliveries(ChatUpsert(fast_app, chat, f"chat {chat}")))
        time.sleep(0.1)
    wait_until(lambda: len(fast.received) >= 30, 10, "the fast tenant's events")
    lags = sorted(
        r.at - datetime.datetime.fromisoformat(r.payload["timestamp"].replace("Z", "+00:00")).timestamp()
        for r in fast.received
    )
    p99 = lags[int(len(lags) * 0.99) - 1 if len(lags) < 100 else int(len(lags) * 0.99)]
    assert p99 < 0.5, f"fast tenant's commit-to-receive p99 {p99:.3f} s (all: {lags})"
    assert len(slow.received) < 60  # the slow one was still busy meanwhile


def test_an_endpoint_failing_too_long_is_disabled(writers, fresh_namespace, receivers):
    impatient = InProcessDispatcher(test_config(fresh_namespace, disable_after_seconds=1.5))
    try:
        app = writers.new_application()
        receiver = receivers(answer=lambda _: (500, {}, b"", 0.0))
        endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
        _chats(writers, app, chats=1, messages=1)
        wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["state"] == "failing", 5, "failing")
        wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["state"] == "disabled", 10, "disabled")
        row = endpoint_row(writers.engine, endpoint.id)
        assert "failing for more than" in row["disabled_reason"] and row["last_error"] == "HTTP 500"
        assert len(receiver.received) >= 2  # retried meanwhile
    finally:
        impatient.stop()


def test_replicas_share_the_endpoints_and_one_stopping_hands_its_own_over(writers, fresh_namespace, receivers):
    key = fresh_namespace.settings.webhook_sealing_key
    one = InProcessDispatcher(test_config(fresh_namespace, owner="replica-one"))
    two = None
    try:
        apps = [writers.new_application(f"app{n}") for n in range(4)]
        sinks = [receivers() for _ in apps]
        endpoints = [add_endpoint(writers.engine, key, app, sink.url).id for app, sink in zip(apps, sinks, strict=True)]
        owners = lambda: {endpoint_row(writers.engine, e)["lease_owner"] for e in endpoints}  # noqa: E731
        wait_until(lambda: owners() == {"replica-one"}, 5, "claims")
        two = InProcessDispatcher(test_config(fresh_namespace, owner="replica-two"))
        time.sleep(1.5)  # several lease rounds: a held lease is not taken from a live replica
        assert owners() == {"replica-one"}
        one.stop()  # as on SIGTERM: leases given back, the other replica claims them at its next round
        wait_until(
            lambda: all(endpoint_row(writers.engine, e)["lease_owner"] == "replica-two" for e in endpoints),
            5,
            "handed over",
        )
        for app in apps:
            _chats(writers, app, chats=1, messages=2)
        for app, sink in zip(apps, sinks, strict=True):
            expected = {i for i, _ in event_ids(writers.engine, app)}
            wait_until(lambda s=sink, x=expected: set(s.ids()) >= x, 10, "deliveries by the other replica")
    finally:
        if two is not None:
            two.stop()
