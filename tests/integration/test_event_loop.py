"""Nothing blocks the API's event loop: every route runs with every dependency behind a slow link, and asyncio's
debug timing (``API_SLOW_CALLBACK_MS``) reports no loop step as long as one network delay."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from chat_api.event_loop import BLOCKED, BLOCKED_MESSAGE, install_blocking_guard
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.tcp import TcpProxy
from tests.conftest import LOG_ROOT

DELAY = 0.25  # seconds added to every chunk each way: any blocking call on the loop would stall it this long
THRESHOLD_MS = 120  # well under DELAY, well over a busy machine's scheduling hiccups


def test_the_guard_reports_a_blocked_loop(caplog):
    """The guard itself: a coroutine that sleeps synchronously is reported (so the test below can fail)."""

    async def blocking() -> None:
        time.sleep(0.2)

    loop = asyncio.new_event_loop()
    before = BLOCKED._value.get()
    try:
        install_blocking_guard(loop, 50)
        with caplog.at_level(logging.WARNING):
            loop.run_until_complete(blocking())
    finally:
        loop.close()
    assert BLOCKED._value.get() == before + 1
    assert any(BLOCKED_MESSAGE in r.getMessage() and "blocking" in r.getMessage() for r in caplog.records)


def _through(url: str, proxy: TcpProxy) -> str:
    """The same URL, pointing at the proxy."""
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    netloc = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{netloc}" if credentials else netloc))


@pytest.fixture
def slow_system():
    ns = Namespace.create("loop")
    s = ns.settings
    urls = {"DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url, "RABBITMQ_URL": s.rabbitmq_url}
    proxies = {name: TcpProxy(urlsplit(u).hostname, urlsplit(u).port, delay=DELAY) for name, u in urls.items()}
    env = {name: _through(url, proxies[name]) for name, url in urls.items()}
    # Every round trip is slow on purpose here: give the dependencies time (connecting takes several of them).
    env.update(API_SLOW_CALLBACK_MS=str(THRESHOLD_MS), PUBLISH_TIMEOUT_SECONDS="10", REDIS_TIMEOUT_SECONDS="15")
    system = System(ns, LOG_ROOT / ns.name, api_workers=1, extra_env=env)
    try:
        system.start(wait_ready=False)
        system.wait_ready(timeout=120)
        yield system
    finally:
        system.stop()
        for proxy in proxies.values():
            proxy.close()
        ns.destroy()


def test_no_route_blocks_the_loop(slow_system: System):
    api = Api(slow_system.base_url)
    log = slow_system.api.log_path
    assert "event-loop guard on" in log.read_text()
    token = api.new_application("loop")
    chat = api.new_chat(token, "first")
    api.wait_chat(token, chat, timeout=60)
    number = api.new_message(token, chat, "hello loop")
    keyed = api.post(
        f"/applications/{token}/chats/{chat}/messages", json={"body": "k"}, headers={"Idempotency-Key": "k1"}
    )
    assert keyed.status_code == 201
    api.wait_message(token, chat, number, timeout=60)
    calls = [
        ("GET", f"/applications/{token}"),
        ("PATCH", f"/applications/{token}"),
        ("GET", f"/applications/{token}/chats"),
        ("GET", f"/applications/{token}/chats?after=0&per_page=1"),
        ("GET", f"/applications/{token}/chats/{chat}"),
        ("PATCH", f"/applications/{token}/chats/{chat}"),
        ("GET", f"/applications/{token}/chats/{chat}/messages"),
        ("GET", f"/applications/{token}/chats/{chat}/messages?after=1"),
        ("GET", f"/applications/{token}/chats/{chat}/messages/{number}"),
        ("PUT", f"/applications/{token}/chats/{chat}/messages/{number}"),
        ("GET", f"/applications/{token}/chats/{chat}/messages/search?query=ell"),
        ("GET", f"/applications/{token}/chats/99/messages"),
        ("GET", "/applications"),
        ("GET", "/status"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
    ]
    for method, path in calls:
        body = {"name": "n", "body": "b"} if method in ("PATCH", "PUT") else None
        resp = api.request(method, path, json=body)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.text)
    assert api.request("DELETE", f"/applications/{token}").status_code == 204
    reports = [line for line in log.read_text().splitlines() if BLOCKED_MESSAGE in line]
    assert reports == [], "\n".join(reports)
