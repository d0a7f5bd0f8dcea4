"""Suspension seen by every API process within the tenant directory's bound, on every route; resume restores it.

A system of its own with two API workers (``GUNICORN_WORKERS=2``, ``TENANT_CACHE_SECONDS=2``). Keep-alive
connections are held on both workers (checked with psutil: each connection's worker is known), both workers' caches
are warmed, then the tenant is suspended through the admin API (which lands on one worker): every connection, so
both processes, must answer 403 within the bound — on every tenant-scoped route — while the admin endpoints keep
working; resuming brings back 200 with the data intact.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import psutil
import pytest

from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT

BOUND = 2.0  # TENANT_CACHE_SECONDS of this system
SLACK = 1.0  # scheduling and polling on 2 shared cores
CONNECTIONS = 16


@pytest.fixture(scope="module")
def two_workers() -> Iterator[System]:
    ns = Namespace.create("suspend")
    system = System(ns, LOG_ROOT / ns.name, api_workers=2, extra_env={"TENANT_CACHE_SECONDS": str(BOUND)}).start()
    deadline = time.monotonic() + 60
    while system.api.log_path.read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, "the second worker did not start"
        time.sleep(0.1)
    yield system
    system.stop()
    ns.destroy()


class Connection:
    """One keep-alive connection, and the API worker (pid) that holds its other end."""

    def __init__(self, system: System) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=10)
        self.conn.connect()
        local_port = self.conn.sock.getsockname()[1]
        self.worker = next(
            (
                w.pid
                for w in psutil.Process(system.api.pid).children()
                for c in w.net_connections("tcp")
                if c.raddr and c.raddr.port == local_port
            ),
            None,
        )

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else {})

    def close(self) -> None:
        self.conn.close()


def tenant_routes(token: str) -> list[tuple[str, str, dict | None]]:
    """Every tenant-scoped route (chat 1 and message 1 exist)."""
    app = f"/applications/{token}"
    return [
        ("GET", app, None),
        ("PATCH", app, {"name": "renamed"}),
        ("GET", f"{app}/chats", None),
        ("POST", f"{app}/chats", {"name": "c"}),
        ("GET", f"{app}/chats/1", None),
        ("PATCH", f"{app}/chats/1", {"name": "c"}),
        ("GET", f"{app}/chats/1/messages", None),
        ("POST", f"{app}/chats/1/messages", {"body": "m"}),
        ("GET", f"{app}/chats/1/messages/1", None),
        ("PATCH", f"{app}/chats/1/messages/1", {"body": "m"}),
        ("GET", f"{app}/chats/1/messages/search?query=hello", None),
    ]


def connections_on_both_workers(system: System) -> list[Connection]:
    for _ in range(5):
        connections = [Connection(system) for _ in range(CONNECTIONS)]
        if len({c.worker for c in connections} - {None}) == 2:
            return connections
        for c in connections:
            c.close()
    pytest.fail("could not hold connections on both API workers")


def seconds_until(connections: list[Connection], path: str, status: int, started: float, limit: float) -> float:
    """Poll every connection until each answered ``status``; the time the slowest took."""
    pending = set(range(len(connections)))
    while pending:
        for i in list(pending):
            if connections[i].request("GET", path)[0] == status:
                pending.discard(i)
        if time.monotonic() - started > limit:
            workers = {connections[i].worker for i in pending}
            pytest.fail(f"{len(pending)} connections (workers {workers}) still not {status} after {limit} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_suspension_reaches_every_process_within_the_bound_and_resume_restores(two_workers):
    api = Api(two_workers.base_url)
    token = api.new_application("to be suspended")
    bystander = api.new_application("bystander")
    chat = api.new_chat(token, "room")
    api.new_message(token, chat, "hello world")
    api.wait_message(token, chat, 1)
    connections = connections_on_both_workers(two_workers)
    try:
        for c in connections:  # both workers' directories now hold the tenant as active
            assert c.request("GET", f"/applications/{token}")[0] == 200

        started = time.monotonic()
        suspended = api.post(f"/applications/{token}/suspend")
        assert suspended.status_code == 200 and suspended.json()["state"] == "suspended"
        took = seconds_until(connections, f"/applications/{token}/chats", 403, started, BOUND + SLACK)
        assert took <= BOUND + SLACK

        for c in connections:
            for method, path, body in tenant_routes(token):
                status, answer = c.request(method, path, body)
                assert (status, answer) == (403, {"error": "application suspended"}), (method, path, c.worker)
            assert c.request("GET", f"/applications/{bystander}")[0] == 200  # other tenants are unaffected
        # Admin endpoints keep working for a suspended tenant.
        assert api.get(f"/applications/{token}/usage").json()["state"] == "suspended"
        assert api.get(f"/applications/{token}/limits").status_code == 200

        started = time.monotonic()
        assert api.post(f"/applications/{token}/resume").json()["state"] == "active"
        assert seconds_until(connections, f"/applications/{token}/chats", 200, started, BOUND + SLACK) <= BOUND + SLACK
    finally:
        for c in connections:
            c.close()
    # Nothing was deleted or changed while suspended (the refused edits never reached the writers).
    assert api.get(f"/applications/{token}/chats/1").json()["name"] == "room"
    assert api.get(f"/applications/{token}/chats/1/messages/1").json()["body"] == "hello world"
    assert api.get(f"/applications/{token}").json()["name"] == "to be suspended"
    assert api.post(f"/applications/{token}/chats", json={"name": "after"}).json() == {"chat_number": 2}


def test_the_refusals_are_counted_by_reason(two_workers):
    api = Api(two_workers.base_url)
    token = api.new_application("counted")
    api.post(f"/applications/{token}/suspend")
    time.sleep(BOUND + 0.2)
    for _ in range(4):
        assert api.get(f"/applications/{token}").status_code == 403
    time.sleep(1.5)  # per-request metrics are flushed once a second

    def refusals() -> float:
        text = api.get("/metrics").text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('chat_api_tenant_refusals_total{reason="suspended"}')
        )

    assert refusals() >= 1  # the series exists and counts (one worker answers /metrics with every worker's sums)
