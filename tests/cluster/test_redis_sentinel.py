"""The system on a Redis Sentinel deployment of its own (chat_devtools.redis_sentinel): a master, 2 replicas and
3 sentinels on loopback.

Real processes (API, writers) with ``REDIS_URL=redis+sentinel://…/chat`` and ``REDIS_REPLICAS_TO_ACK=1``: under
create load the master is SIGKILLed, the sentinels promote a replica, the clients follow it, creates answer 201
again within a few seconds, and no number is ever answered twice (every 201 against each other and against the
rows in MySQL): a number is answered only once a replica holds it, and the promoted replica is the most advanced.

MariaDB and RabbitMQ are the shared ones, isolated by the test's own database and queue names.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import text

from chat_common.db import make_engine
from chat_devtools.redis_sentinel import RedisSentinel, unavailable_reason
from tests.cluster.test_redis_cluster import Load, _check_no_number_twice, stored_bodies
from tests.conftest import LOG_ROOT
from tests.support.http import wait_for
from tests.support.namespace import Namespace
from tests.support.processes import System

pytestmark = pytest.mark.slow

SHARED_REDIS = "redis://127.0.0.1:6379/0"
APPS = 4
BACK_WITHIN_SECONDS = 10  # SIGKILL -> first 201 again: down-after 0.5 s + election + clients reconnecting


@dataclasses.dataclass
class Deployment:
    sentinel: RedisSentinel
    system: System
    engine: object
    apps: dict[int, str]  # application id -> token

    def stored(self, app: int) -> dict[int, str]:
        """message number -> body of chat 1 of ``app`` in MySQL."""
        return stored_bodies(self.engine, app)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if os.environ.get("API_BASE_URL"):
        pytest.skip("the cluster tests start and kill their own processes; API_BASE_URL is set")
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot start private Redis servers and sentinels here: {reason}")
    try:
        sentinel = RedisSentinel(replicas=2, sentinels=3, down_after_ms=500, failover_timeout_ms=2000).start()
    except (OSError, TimeoutError) as exc:  # e.g. redis-server refuses --sentinel here
        pytest.skip(f"cannot start Redis Sentinel here: {exc}")
    ns = Namespace.create("rsn", redis_url=sentinel.url)
    env = {"REDIS_REPLICAS_TO_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT_MS": "500", "REDIS_TIMEOUT_SECONDS": "2"}
    system = System(ns, LOG_ROOT / ns.name, api_workers=2, extra_env=env)
    engine = make_engine(ns.settings.database_url, pool_size=2)
    try:
        system.start()
        apps: dict[int, str] = {}
        for i in range(APPS):
            resp = requests.post(f"{system.base_url}/applications", json={"name": f"tenant {i}"}, timeout=15)
            assert resp.status_code == 201, resp.text
            token = resp.json()["token"]
            with engine.connect() as conn:
                app = conn.execute(text("SELECT id FROM applications WHERE token = :t"), {"t": token}).scalar_one()
            apps[int(app)] = token
            resp = requests.post(f"{system.base_url}/applications/{token}/chats", json={"name": "room"}, timeout=15)
            assert (resp.status_code, resp.json().get("chat_number")) == (201, 1), resp.text
        yield Deployment(sentinel, system, engine, apps)
    finally:
        system.stop()
        engine.dispose()
        sentinel.stop()
        # The deployment is gone: drop the database and queues (no key of this namespace is in the shared Redis).
        dataclasses.replace(ns, settings=dataclasses.replace(ns.settings, redis_url=SHARED_REDIS)).destroy()


def test_a_sentinel_failover_resumes_creates_and_never_repeats_a_number(deployment: Deployment):
    d = deployment
    apps = sorted(d.apps)
    old = d.sentinel.current_master()
    with Load(d, apps, threads=4) as load:
        time.sleep(2)
        before = load.statuses(set(apps))
        killed_at = time.monotonic()
        old.kill()
        wait_for(lambda: d.sentinel.current_master() is not old, 30, what="a replica promoted by the sentinels")
        promoted_at = time.monotonic()
        wait_for(
            lambda: any(at > promoted_at and status == 201 for at, _, status, _, _ in list(load.answers)),
            30,
            what="201s after the failover",
        )
        back_at = min(at for at, _, status, _, _ in list(load.answers) if at > promoted_at and status == 201)
        time.sleep(2)
    assert set(before) == {201}, before  # a healthy deployment answers every create
    during = load.statuses(set(apps), since=killed_at)
    assert set(during) <= {201, 503}, during  # the outage is answered with 503 + Retry-After, never a 500 or a drop
    assert back_at - killed_at < BACK_WITHIN_SECONDS, f"creates answered 201 again only {back_at - killed_at:.1f}s"
    assert load.statuses(set(apps), since=back_at + 1)[201] > 0  # and keep being answered
    total = _check_no_number_twice(d, load, apps)
    print(
        f"sentinel failover: promoted {promoted_at - killed_at:.1f}s, 201 again {back_at - killed_at:.1f}s after "
        f"the SIGKILL; answers since {dict(during)}; {total} creates accepted"
    )
