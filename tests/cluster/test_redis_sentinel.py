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
import time
from collections.abc import Iterator

import pytest

from chat_devtools.http import wait_for
from chat_devtools.redis_sentinel import RedisSentinel, unavailable_reason
from tests.cluster.test_redis_cluster import (
    Tenants,
    _check_no_number_twice,
    message_load,
    tenants_on_private_redis,
)

pytestmark = pytest.mark.slow

APPS = 4
BACK_WITHIN_SECONDS = 10  # SIGKILL -> first 201 again: down-after 0.5 s + election + clients reconnecting


@dataclasses.dataclass
class Deployment(Tenants):
    sentinel: RedisSentinel


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    def start() -> RedisSentinel:
        return RedisSentinel(replicas=2, sentinels=3, down_after_ms=500, failover_timeout_ms=2000).start()

    with tenants_on_private_redis(start, unavailable_reason, "Redis Sentinel", "rsn", APPS) as (tenants, sentinel):
        yield Deployment(**vars(tenants), sentinel=sentinel)


def test_a_sentinel_failover_resumes_creates_and_never_repeats_a_number(deployment: Deployment):
    d = deployment
    apps = sorted(d.apps)
    old = d.sentinel.current_master()
    with message_load(d, apps, threads=4) as load:
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
        # And creates keep being answered: a 201 more than a second after the first (a loaded machine may take longer
        # than a fixed two seconds to answer the next one).
        wait_for(lambda: load.statuses(set(apps), since=back_at + 1)[201] > 0, 30, what="201s after the first one")
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
