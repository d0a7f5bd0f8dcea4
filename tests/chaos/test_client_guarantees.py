"""What a client relies on, under faults: honest readiness, idempotent retries across a Redis loss, no 500s.

Each test runs a fresh system on the private MariaDB, Redis and RabbitMQ (tests/chaos/conftest.py) and records
what it observed in the ``guarantees`` results, from which docs/reliability.md is generated.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
import requests
from sqlalchemy import text

from chat_devtools.http import wait_for
from tests.chaos.conftest import Deployment

pytestmark = pytest.mark.slow


def _status(d: Deployment) -> dict:
    return requests.get(f"{d.system.base_url}/status", timeout=10).json()["checks"]


def _numbering_open(d: Deployment) -> bool:
    try:
        return _status(d)["numbering"] == "open"
    except (requests.RequestException, KeyError, ValueError):
        return False


def _keyed_message(d: Deployment, token: str, chat: int, key: str, body: str) -> requests.Response:
    return requests.post(
        f"{d.system.base_url}/applications/{token}/chats/{chat}/messages",
        json={"body": body},
        headers={"Idempotency-Key": key},
        timeout=15,
    )


def _rows_with_body(d: Deployment, body: str) -> int:
    with d.engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM messages WHERE body = :b"), {"b": body}).scalar_one()


def test_readiness_stays_up_through_a_broker_restart(deployment: Deployment, guarantee_results):
    d = deployment
    token, chat = d.api.new_tenant_with_chat("readiness")
    row = guarantee_results.add(check="RabbitMQ SIGKILLed and restarted: /readyz of every API process",
                                outcome="fail")  # fmt: skip
    d.infra.rabbitmq.kill()
    ready, creates = Counter(), Counter()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        ready[requests.get(f"{d.system.base_url}/readyz", timeout=10).status_code] += 1
        creates[d.api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": "x"}).status_code] += 1
        time.sleep(0.1)
    broker_down = _status(d)["rabbitmq"]
    reads = d.api.get(f"/applications/{token}/chats/{chat}").status_code
    d.infra.rabbitmq.start()
    recovered = wait_for(
        lambda: d.api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": "y"}).status_code == 201,
        60,
        what="a create accepted after the broker came back",
    )
    row.update(observed=f"readyz {dict(ready)}, creates {dict(creates)}, reads {reads}, /status rabbitmq "
               f"{broker_down!r} while the broker was down")  # fmt: skip
    assert set(ready) == {200}, ready  # the process could serve throughout: it stays in the Service
    assert set(creates) <= {201, 503} and creates[503] > 0, creates  # writes say so per request
    assert broker_down == "unavailable"
    assert reads == 200  # reads need no broker: they kept working
    assert recovered
    row["outcome"] = "pass"


def test_a_keyed_retry_across_a_redis_loss_answers_the_first_number(deployment: Deployment, guarantee_results):
    d = deployment
    token, chat = d.api.new_tenant_with_chat("idempotent retries")
    run = uuid.uuid4().hex[:8]
    sent = {f"key-{run}-{i}": f"keyed {run} {i}" for i in range(20)}
    first = {}
    for key, body in sent.items():
        resp = _keyed_message(d, token, chat, key, body)
        assert resp.status_code == 201, resp.text
        first[key] = resp.json()["message_number"]
    for key, body in sent.items():
        wait_for(lambda b=body: _rows_with_body(d, b) == 1, 30, what=f"row of {key}")
    row = guarantee_results.add(check="keyed creates accepted, Redis SIGKILLed and restarted empty, "
                                "then retried with the same keys", outcome="fail")  # fmt: skip
    d.infra.redis.kill()  # no persistence: every key, counter and idempotency record is gone
    d.infra.redis.start()
    reopened = wait_for(lambda: _numbering_open(d), 60, what="numbering re-opened after the Redis loss")
    answers = {key: _keyed_message(d, token, chat, key, body) for key, body in sent.items()}
    statuses = Counter(r.status_code for r in answers.values())
    same = sum(r.status_code == 201 and r.json()["message_number"] == first[k] for k, r in answers.items())
    replayed = sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers.values())
    time.sleep(1.0)  # any second row the retries could have caused is written by now
    rows = Counter(_rows_with_body(d, body) for body in sent.values())
    fresh = d.api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": f"after {run}"})
    row.update(observed=f"{same}/{len(sent)} retries answered the first number ({replayed} marked replayed), "
               f"statuses {dict(statuses)}, rows per key {dict(rows)}")  # fmt: skip
    assert reopened
    assert statuses == {201: len(sent)}, statuses
    assert same == len(sent) and replayed == len(sent)
    assert rows == {1: len(sent)}, rows  # one row each: nothing stored twice
    assert fresh.status_code == 201 and fresh.json()["message_number"] > max(first.values())
    row["outcome"] = "pass"


def test_redis_killed_mid_request_with_writers_down_answers_only_201_or_503(deployment: Deployment, guarantee_results):
    d = deployment
    token, chat = d.api.new_tenant_with_chat("redis killed mid-request")
    d.system.chat_writer.stop()
    d.system.message_writer.stop()
    statuses: Counter = Counter()
    stop = threading.Event()
    lock = threading.Lock()

    def client(index: int) -> None:
        session, n = requests.Session(), 0
        while not stop.is_set():
            n += 1
            key = f"mid-{index}-{n}"
            try:
                status = session.post(
                    f"{d.system.base_url}/applications/{token}/chats/{chat}/messages",
                    json={"body": f"mid {index} {n}"},
                    headers={"Idempotency-Key": key},
                    timeout=15,
                ).status_code
            except requests.RequestException:
                status = 0
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    d.infra.redis.kill()
    time.sleep(1.5)
    d.infra.redis.start()
    time.sleep(1.0)
    d.system.chat_writer.start()
    d.system.message_writer.start()
    wait_for(lambda: _numbering_open(d), 60, what="numbering re-opened")
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(20)
    row = guarantee_results.add(check="Redis SIGKILLed under keyed creates with the writers stopped",
                                observed=f"answers {dict(statuses)}", outcome="fail")  # fmt: skip
    assert set(statuses) <= {201, 503}, statuses  # never a 500, never a dropped connection
    assert statuses[503] > 0 and statuses[201] > 0, statuses
    row["outcome"] = "pass"
