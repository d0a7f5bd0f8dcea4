"""Webhook deliveries through outages: the dispatcher process SIGKILLed mid-delivery and restarted, and a receiver
that refuses connections for minutes (issue #25: two) and comes back. Nothing may be missing, each chat's events must
arrive in order (among each webhook-id's first arrivals), and a redelivery carries the same webhook-id.

The dispatcher here is the real ``python -m webhook_dispatcher`` process (tests/integration/webhook_kit.py), and the
receivers verify every delivery with the Standard Webhooks reference library.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from chat_common.wire.contracts import ChatUpsert, MessageUpsert
from tests.conftest import LOG_ROOT
from tests.integration.test_event_log import Writers
from tests.integration.webhook_kit import (
    DispatcherProcess,
    InProcessDispatcher,
    Receiver,
    add_endpoint,
    assert_chat_order,
    endpoint_row,
    event_ids,
    free_port,
    held_rows,
    test_config,
    wait_until,
)

# How long the receiver refuses connections (issue #25 asks for 2 minutes; WEBHOOK_OUTAGE_SECONDS shortens it locally).
OUTAGE_SECONDS = float(os.environ.get("WEBHOOK_OUTAGE_SECONDS", "120"))


@pytest.fixture
def writers(fresh_namespace) -> Iterator[Writers]:
    w = Writers(fresh_namespace)
    yield w
    w.close()


class Typist:
    """Writes chats and messages of one application in a thread until stopped (a few per 100 ms, several chats)."""

    def __init__(self, writers: Writers, app: int, chats: int) -> None:
        self.writers, self.app, self.chats = writers, app, chats
        self.stopped = threading.Event()
        writers.chats(writers.deliveries(*(ChatUpsert(app, c, f"chat {c}") for c in range(1, chats + 1))))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        number = 0
        while not self.stopped.is_set():
            number += 1
            batch = [MessageUpsert(self.app, c, number, f"c{c} m{number}") for c in range(1, self.chats + 1)]
            self.writers.messages(self.writers.deliveries(*batch))
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def _assert_complete_and_ordered(receiver: Receiver, expected: list[tuple[int, int]]) -> None:
    assert set(receiver.ids()) == {i for i, _ in expected}
    firsts = receiver.first_arrivals()
    assert_chat_order(firsts)
    for got in receiver.received:  # a redelivery is the same message: same webhook-id for the same event
        assert got.message_id == f"evt_{got.payload['data']['id']}"
    assert receiver.unverified == []


def test_a_sigkilled_dispatcher_loses_nothing_and_keeps_each_chats_order(writers, fresh_namespace):
    app = writers.new_application()
    receiver = Receiver(answer=lambda _: (204, {}, b"", 0.01))  # a little time per answer: deliveries in flight
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    receiver.secrets = [endpoint.secret]
    env = {"WEBHOOK_LEASE_SECONDS": "2", "WEBHOOK_RETRY_SCHEDULE": "0.3,0.5,1,1,2", "WEBHOOK_PAGE_SIZE": "50"}
    log_path = LOG_ROOT / fresh_namespace.name / "webhook-dispatcher.log"
    first = DispatcherProcess(fresh_namespace, log_path, **env).start()
    second = None
    typist = Typist(writers, app, chats=5)
    try:
        wait_until(lambda: len(receiver.received) >= 40, 30, "deliveries under way")
        first.kill()  # SIGKILL mid-delivery: its lease stays until it expires
        killed_at = len(receiver.received)
        time.sleep(0.5)
        port = free_port()
        second = DispatcherProcess(fresh_namespace, log_path, WEBHOOK_DISPATCHER_PORT=str(port), **env).start()
        wait_until(lambda: len(receiver.received) >= killed_at + 40, 30, "deliveries after the restart")
        probes = f"http://127.0.0.1:{port}"
        assert requests.get(f"{probes}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{probes}/readyz", timeout=5).status_code == 200
        metrics = requests.get(f"{probes}/metrics", timeout=5).text
        assert 'chat_webhook_deliveries_total{outcome="delivered"}' in metrics
        assert "chat_webhook_leased_endpoints 1.0" in metrics
        assert f'chat_webhook_backlog_events{{endpoint="{endpoint.id}"}}' in metrics
        typist.stop()
        expected = event_ids(writers.engine, app)
        wait_until(lambda: set(receiver.ids()) >= {i for i, _ in expected}, 30, "every event delivered")
        _assert_complete_and_ordered(receiver, expected)
        last = expected[-1][0]
        wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["position"] >= last, 10, "position at the end")
        assert second.terminate() == 0  # SIGTERM: leases given back
        assert endpoint_row(writers.engine, endpoint.id)["lease_owner"] is None
        log_text = first.log_text()
        assert "query-secret" not in log_text and endpoint.secret not in log_text
    finally:
        typist.stop()
        for process in (first, second):
            if process is not None and process.process is not None and process.process.poll() is None:
                process.kill()
        receiver.stop()


@pytest.mark.slow
def test_a_receiver_down_for_minutes_gets_everything_in_order_when_back(writers, fresh_namespace):
    page = 10
    # Retries probing the receiver every few seconds, for longer than the outage (the default schedule takes a day).
    steps = max(4, int(OUTAGE_SECONDS / 4) + 4)
    schedule = (0.5, 1.0, 2.0, *([4.0] * steps))
    dispatcher = InProcessDispatcher(test_config(fresh_namespace, retry_schedule=schedule, page_size=page))
    app = writers.new_application()
    receiver = Receiver()
    endpoint = add_endpoint(writers.engine, fresh_namespace.settings.webhook_sealing_key, app, receiver.url)
    receiver.secrets = [endpoint.secret]
    typist = None
    try:
        typist = Typist(writers, app, chats=3)
        wait_until(lambda: len(receiver.received) >= 10, 20, "deliveries before the outage")
        receiver.stop()  # connections refused from now on
        down_until = time.monotonic() + OUTAGE_SECONDS
        most_held = 0
        while time.monotonic() < down_until:
            time.sleep(1.0)
            if time.monotonic() > down_until - OUTAGE_SECONDS + 10:
                typist.stop()  # ten seconds of writes into the outage, then quiet
            most_held = max(most_held, len(held_rows(writers.engine, endpoint.id)))
        row = endpoint_row(writers.engine, endpoint.id)
        assert row["state"] == "failing" and row["failing_since"] is not None and row["last_error"]
        # The log is the backlog: while the receiver is down, the dispatcher holds at most about one page.
        assert 0 < most_held <= page
        receiver.start()
        expected = event_ids(writers.engine, app)
        wait_until(lambda: set(receiver.ids()) >= {i for i, _ in expected}, 60, "every event delivered")
        _assert_complete_and_ordered(receiver, expected)
        wait_until(lambda: endpoint_row(writers.engine, endpoint.id)["state"] == "healthy", 5, "healthy again")
        assert held_rows(writers.engine, endpoint.id) == []
    finally:
        if typist is not None:
            typist.stop()
        dispatcher.stop()
        receiver.stop()
