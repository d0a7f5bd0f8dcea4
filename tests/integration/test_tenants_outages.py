"""Tenant authority during outages, against real services: MySQL and Redis made unreachable behind TCP proxies.

A system of its own (one API worker) whose ``DATABASE_URL`` and ``REDIS_URL`` point at :class:`TcpProxy` instances
in front of the shared MariaDB and Redis; :meth:`TcpProxy.block` cuts every connection and refuses new ones, as a
dead server would.

- MySQL unreachable: a tenant's cached entry keeps serving creates (which need only Redis and RabbitMQ) for at most
  ``TENANT_STALE_SECONDS`` after MySQL last confirmed it, then 503 with Retry-After — a suspension or a rotation made
  just before the outage cannot go unenforced for longer.
- Redis unreachable: the per-tenant request rate still holds, counted in the process.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.tcp import TcpProxy
from tests.conftest import LOG_ROOT

STALE_SECONDS = 3.0
RATE = 5


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    credentials, _, _ = parts.netloc.rpartition("@")
    netloc = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{netloc}" if credentials else netloc))


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[System, dict[str, TcpProxy]]]:
    ns = Namespace.create("outage")
    s = ns.settings
    urls = {"DATABASE_URL": s.database_url, "REDIS_URL": s.redis_url}
    proxies = {name: TcpProxy(urlsplit(u).hostname, urlsplit(u).port) for name, u in urls.items()}
    env = {name: _through(url, proxies[name]) for name, url in urls.items()}
    env.update(
        TENANT_CACHE_SECONDS="1",
        TENANT_STALE_SECONDS=str(STALE_SECONDS),
        RATE_LIMIT_PER_SECOND=str(RATE),
        REDIS_TIMEOUT_SECONDS="1",
    )
    system = System(ns, LOG_ROOT / ns.name, api_workers=1, extra_env=env)
    try:
        system.start()
        yield system, proxies
    finally:
        system.stop()
        for proxy in proxies.values():
            proxy.close()
        ns.destroy()


def test_cached_authority_is_served_only_up_to_the_stale_bound(proxied):
    system, proxies = proxied
    api = Api(system.base_url)
    token = api.new_application("outage")
    api.new_chat(token, "warm")  # numbering loaded: further creates need no MySQL
    time.sleep(1.0)  # not over the rate limit of the checks below
    proxies["DATABASE_URL"].block()
    try:
        started = time.monotonic()
        first = api.post(f"/applications/{token}/chats", json={"name": "during"})
        assert first.status_code == 201, first.text  # MySQL blinked: creates go on
        answers = []
        while time.monotonic() - started < STALE_SECONDS + 3:
            answers.append((time.monotonic() - started, api.post(f"/applications/{token}/chats", json={"name": "x"})))
            time.sleep(0.3)
        late = [r for at, r in answers if at > STALE_SECONDS + 1.5]
        assert late and all(r.status_code == 503 for r in late), [(round(at, 1), r.status_code) for at, r in answers]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in late)
        assert all(r.headers["Content-Type"].startswith("application/json") for r in late)
    finally:
        proxies["DATABASE_URL"].unblock()
    # MySQL back: served again.
    deadline = time.monotonic() + 10
    while api.post(f"/applications/{token}/chats", json={"name": "after"}).status_code != 201:
        assert time.monotonic() < deadline, "the tenant was not served again after MySQL came back"
        time.sleep(0.3)


def test_the_rate_limit_holds_while_redis_is_down(proxied):
    system, proxies = proxied
    api = Api(system.base_url)
    token = api.new_application("ratelimit")
    chat = api.new_chat(token, "c")
    api.wait_chat(token, chat)
    time.sleep(1.0)
    proxies["REDIS_URL"].block()
    try:
        statuses = []
        started = time.monotonic()
        while time.monotonic() - started < 0.8 or len(statuses) < 3 * RATE:
            statuses.append(api.get(f"/applications/{token}/chats/{chat}").status_code)
    finally:
        proxies["REDIS_URL"].unblock()
    seconds = int(time.monotonic() - started) + 2  # windows the requests may have spanned (the first: one more)
    assert 429 in statuses, statuses
    assert statuses.count(200) <= RATE * seconds, statuses


def test_a_flood_of_random_tokens_costs_mysql_at_most_the_budget(proxied):
    """Each distinct well-shaped random token is a lookup that finds nothing: past the per-process budget
    (TENANT_UNKNOWN_LOOKUPS_PER_SECOND, 100 by default, as many at once) they answer 503 before any query, while a
    real tenant this process knows keeps being served."""
    system, _ = proxied
    api = Api(system.base_url)
    token = api.new_application("flooded")
    assert api.get(f"/applications/{token}/chats").status_code == 200
    statuses: list[int] = []
    started = time.monotonic()
    for _ in range(600):
        statuses.append(api.get(f"/applications/{secrets.token_urlsafe(24)}/chats").status_code)
    elapsed = time.monotonic() - started
    assert set(statuses) <= {404, 503}
    looked_up = statuses.count(404)  # one MySQL query each
    assert looked_up <= 100 + 100 * elapsed + 10, (looked_up, elapsed)
    assert statuses.count(503) > 0
    assert api.get(f"/applications/{token}/chats").status_code == 200
