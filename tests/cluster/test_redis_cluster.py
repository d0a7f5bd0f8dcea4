"""The system on a Redis Cluster of its own (3 masters, 3 replicas on loopback; chat_devtools.redis_cluster).

Real processes (API, writers) with ``REDIS_URL=redis+cluster://…`` and ``REDIS_REPLICAS_TO_ACK=1``:

- numbering is gap-free and duplicate-free under concurrent creates across many applications (every shard);
- a master SIGKILLed: its replica takes over, the tenants of that shard get 503 meanwhile and then 201 again, no
  number is ever answered twice (every 201 against each other and against the rows in MySQL), and tenants on the
  other shards never see a 503;
- a shard that truly lost its data (master and replica SIGKILLed, restarted empty): only its tenants pause, until
  the per-slot recovery re-opens their slots — under the other shards' continuous load, and with a message that
  keeps cycling through the retry tiers, so by the precise rule (chat_api.numbering.reopening).

MariaDB and RabbitMQ are the shared ones, isolated by the test's own database and queue names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import pika
import pytest
import requests
from sqlalchemy import Engine, text

from chat_common.clients.broker import BrokerNodes
from chat_common.clients.db import make_engine
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.keys import application_slot
from chat_common.wire.topology import Topology
from chat_common.writing.batches import PUBLISHED_AT_HEADER, stamp_header
from chat_devtools.http import wait_for
from chat_devtools.load.clients import MessageLoad
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.redis_cluster import RedisCluster, RedisNode, unavailable_reason
from tests.cluster.conftest import skip_unless_servers_start_here
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow

SHARED_REDIS = "redis://127.0.0.1:6379/0"
APPS = 12
T = TypeVar("T")


@dataclasses.dataclass
class Tenants:
    """The system on a private Redis deployment, and its applications (id -> token), each with chat 1."""

    namespace: Namespace
    system: System
    engine: Engine
    apps: dict[int, str]

    def stored(self, app: int) -> dict[int, str]:
        """message number -> body of chat 1 of ``app``, as MySQL holds them."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id "
                    "WHERE c.application_id = :a AND c.number = 1"
                ),
                {"a": app},
            ).all()
        return {int(n): body for n, body in rows}


@dataclasses.dataclass
class Deployment(Tenants):
    cluster: RedisCluster

    def master_of_app(self, app: int) -> RedisNode:
        return self.cluster.master_of(application_slot(app))


@contextlib.contextmanager
def system_with_tenants(prefix: str, redis_url: str, tenants: int) -> Iterator[Tenants]:
    """The API (2 workers) and both writers on ``redis_url``, a replica acknowledging every number, with ``tenants``
    applications (id -> token) that each have chat 1. Afterwards the database and queues go (no key of the
    namespace is in the shared Redis); the Redis deployment is the caller's."""
    ns = Namespace.create(prefix, redis_url=redis_url)
    env = {"REDIS_REPLICAS_TO_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT_MS": "500", "REDIS_TIMEOUT_SECONDS": "2"}
    system = System(ns, LOG_ROOT / ns.name, api_workers=2, extra_env=env)
    engine = make_engine(ns.settings.database_url, pool_size=2)
    try:
        system.start()
        apps: dict[int, str] = {}
        for i in range(tenants):
            resp = requests.post(f"{system.base_url}/applications", json={"name": f"tenant {i}"}, timeout=15)
            assert resp.status_code == 201, resp.text
            token = resp.json()["token"]
            with engine.connect() as conn:
                app = conn.execute(
                    text("SELECT id FROM applications WHERE token_digest = SHA2(:t, 256)"), {"t": token}
                ).scalar_one()
            apps[int(app)] = token
            resp = requests.post(f"{system.base_url}/applications/{token}/chats", json={"name": "room"}, timeout=15)
            assert (resp.status_code, resp.json().get("chat_number")) == (201, 1), resp.text
        yield Tenants(ns, system, engine, apps)
    finally:
        system.stop()
        engine.dispose()
        dataclasses.replace(ns, settings=dataclasses.replace(ns.settings, redis_url=SHARED_REDIS)).destroy()


def start_or_skip(start: Callable[[], T], unavailable: Callable[[], str | None], what: str) -> T:
    """``start()`` the private Redis deployment, or skip the module: against a deployed API (``API_BASE_URL``),
    on a machine without the binaries (``unavailable``), or when it does not come up (no free ports, a
    redis-server that refuses cluster or sentinel mode)."""
    skip_unless_servers_start_here(what, unavailable)
    try:
        return start()
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"cannot start {what} here: {exc}")


@contextlib.contextmanager
def tenants_on_private_redis(
    start: Callable[[], T], unavailable: Callable[[], str | None], what: str, prefix: str, tenants: int
):
    """:func:`system_with_tenants` on a private Redis deployment (:func:`start_or_skip`), stopped afterwards; yields
    the tenants and the Redis deployment."""
    redis_deployment = start_or_skip(start, unavailable, what)
    try:
        with system_with_tenants(prefix, redis_deployment.url, tenants) as found:
            yield found, redis_deployment
    finally:
        redis_deployment.stop()


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    def start() -> RedisCluster:
        return RedisCluster(masters=3, replicas=1, node_timeout_ms=1000).start()

    with tenants_on_private_redis(start, unavailable_reason, "a Redis Cluster", "rcl", APPS) as (tenants, cluster):
        yield Deployment(**vars(tenants), cluster=cluster)


def message_load(d: Tenants, apps: list[int], threads: int = 6) -> MessageLoad:
    """Messages without pause into chat 1 of ``apps`` of the deployment (``with`` it), every answer recorded."""
    return MessageLoad(d.system.base_url, {app: d.apps[app] for app in apps}, threads)


def _check_no_number_twice(d: Tenants, load: MessageLoad, apps: list[int]) -> int:
    """Every 201 number is unique per chat and its row in MySQL holds the body it was answered for."""
    accepted = load.accepted()
    for app in apps:
        numbers = [n for n, _ in accepted[app]]
        duplicated = [n for n, c in Counter(numbers).items() if c > 1]
        assert not duplicated, f"application {app}: numbers answered twice: {duplicated[:10]}"

    def all_written() -> bool:
        return all(set(n for n, _ in accepted[app]) <= set(d.stored(app)) for app in apps)

    wait_for(all_written, 60, what="every accepted message written to MySQL")
    for app in apps:
        stored = d.stored(app)
        wrong = [(n, body, stored[n]) for n, body in accepted[app] if stored[n] != body]
        assert not wrong, f"application {app}: a number was given to two messages: {wrong[:5]}"
    return sum(len(v) for v in accepted.values())


def test_numbering_is_gap_free_and_unique_across_shards(deployment: Deployment):
    d = deployment
    apps = sorted(d.apps)
    masters = {d.master_of_app(app).port for app in apps}
    assert len(masters) == 3, f"the {APPS} applications should spread over the 3 shards: {masters}"
    before = {app: max(d.stored(app), default=0) for app in apps}
    with message_load(d, apps) as load:
        time.sleep(5)
    statuses = load.statuses(set(apps))
    assert set(statuses) == {201}, statuses  # a healthy cluster answers every create
    accepted = load.accepted()
    for app in apps:
        numbers = sorted(n for n, _ in accepted[app])
        assert numbers == list(range(before[app] + 1, before[app] + 1 + len(numbers))), f"gaps or repeats in {app}"
    total = _check_no_number_twice(d, load, apps)
    assert total > 100, f"only {total} creates in 5 s"


def test_a_master_failover_pauses_only_its_tenants_and_never_repeats_a_number(deployment: Deployment):
    d = deployment
    apps = sorted(d.apps)
    victim = d.master_of_app(apps[0])
    replica = d.cluster.replicas_of(victim)[0]
    affected = {app for app in apps if d.master_of_app(app) is victim}
    others = set(apps) - affected
    assert affected and others
    with message_load(d, apps) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        victim.kill()
        wait_for(lambda: replica.role() == "master", 30, what="the replica promoted")
        promoted_at = time.monotonic()
        # A promoted master without a replica cannot acknowledge anything (WAIT): its tenants get 503 until the old
        # master is back (empty) as its replica and in sync.
        victim.start()
        d.cluster.wait_healthy(60)
        recovered = wait_for(
            lambda: load.statuses(affected, since=time.monotonic() - 1)[201] > 0, 60, what="201s for the tenants"
        )
        time.sleep(2)
    assert recovered
    during = load.statuses(affected, since=killed_at)
    assert during[503] > 0 or during[0] == 0, during  # the shard's outage was answered with 503, never dropped
    assert set(load.statuses(others)) == {201}, load.statuses(others)  # the other shards never paused
    assert set(load.statuses(affected)) <= {201, 503}, load.statuses(affected)
    _check_no_number_twice(d, load, apps)
    print(f"failover: promoted after {promoted_at - killed_at:.1f} s; affected tenants {dict(during)}")


def test_a_shard_that_lost_its_data_pauses_only_its_tenants(deployment: Deployment):
    d = deployment
    d.cluster.wait_healthy(60)
    apps = sorted(d.apps)
    victim = d.master_of_app(apps[-1])
    replicas = d.cluster.replicas_of(victim)
    affected = {app for app in apps if d.master_of_app(app) is victim}
    others = set(apps) - affected

    def reopened() -> float | None:
        """When the shard's tenants got a 201 again after their first 503 (a 201 needs the slot's epoch back)."""
        answers = [(t, status) for t, app, status, _, _ in list(load.answers) if app in affected and t > lost_at]
        first_503 = min((t for t, status in answers if status == 503), default=None)
        if first_503 is None:
            return None
        return min((t for t, status in answers if status == 201 and t > first_503), default=None)

    # Another tenant's message whose chat is not written yet keeps cycling through the retry tiers (stamped long
    # after the loss): the queues are never all empty, so only the precise rule can re-open the lost slots.
    connection = BrokerNodes.from_settings(d.namespace.settings).connect_blocking()
    try:
        props = pika.BasicProperties(delivery_mode=2, headers={PUBLISHED_AT_HEADER: stamp_header(time.time() + 3600)})
        body = MessageUpsert(sorted(others)[0], 999, 1, "later", 0).encode()
        connection.channel().basic_publish("", Topology.from_settings(d.namespace.settings).messages.name, body, props)
    finally:
        connection.close()
    with message_load(d, apps) as load:
        time.sleep(1.5)
        lost_at = time.monotonic()
        for node in (victim, *replicas):
            node.kill()
        for node in (victim, *replicas):
            node.start()  # nothing on disk: the shard comes back empty, with its slots
        d.cluster.wait_healthy(60)
        back_at = time.monotonic()
        # Per-slot recovery (precise rule): grace, evidence time, one round -> the lost slots re-open from MySQL
        # while the other shards' tenants keep creating without pause.
        wait_for(lambda: reopened() is not None, 30, what="the lost slots re-opened under load")
        time.sleep(1.5)
    reopened_at = reopened()
    closed = load.statuses(affected, since=lost_at)
    assert set(load.statuses(others)) == {201}, load.statuses(others)  # the other shards never paused
    assert closed[503] > 0 and set(closed) <= {201, 503}, closed  # the shard's tenants waited (503 + Retry-After)
    assert load.statuses(others, since=reopened_at)[201] > 0  # re-opened while the load went on
    _check_no_number_twice(d, load, apps)
    assert reopened_at - lost_at < 30, f"re-opened only {reopened_at - lost_at:.1f}s after the loss"
    print(
        f"lost shard: healthy again {back_at - lost_at:.1f}s after the kill, re-opened under load "
        f"{reopened_at - lost_at:.1f}s after the kill; tenants' answers {dict(closed)}"
    )
