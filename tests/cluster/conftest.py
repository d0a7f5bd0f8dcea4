"""A 3-node RabbitMQ cluster of our own on loopback (chat_devtools.rabbit_cluster), for the multi-node tests.

Never the shared broker on 5672: the nodes have their own names, ports, data directories and Erlang cookie.
MariaDB and Redis are the shared ones, isolated as everywhere by the test's own database and key prefix.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest

from chat_devtools.rabbit_cluster import RabbitCluster, unavailable_reason
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT


def skip_unless_servers_start_here(what: str, unavailable: Callable[[], str | None]) -> None:
    """Skip where the test cannot start its own ``what``: against a deployed API (``API_BASE_URL``; these tests
    start and kill their own processes), or on a machine where ``unavailable()`` gives the reason they cannot."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip("the cluster tests start and kill their own processes; API_BASE_URL is set")
    reason = unavailable()
    if reason:
        pytest.skip(f"cannot start {what} here: {reason}")


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """Three private RabbitMQ nodes joined into one cluster, with a TCP balancer in front (a Service's role)."""
    skip_unless_servers_start_here("private RabbitMQ nodes", unavailable_reason)
    root = LOG_ROOT / f"rabbit-cluster-{uuid.uuid4().hex[:8]}"
    cluster = RabbitCluster(root, size=3).start()
    cluster.start_balancer()
    yield cluster
    cluster.stop()
    for node in cluster.nodes:  # keep the nodes' logs, drop their data
        shutil.rmtree(node.dir / "mnesia", ignore_errors=True)


@pytest.fixture
def healthy_cluster(rabbit_cluster: RabbitCluster) -> RabbitCluster:
    """The session's cluster with every node running (a test before may have left one down)."""
    for node in rabbit_cluster.nodes:
        if not node.running:
            node.start()
    for node in rabbit_cluster.nodes:
        node.wait_ready()
    return rabbit_cluster


@pytest.fixture(scope="session")
def cluster_results() -> Iterator[Results]:
    """Figures of the broker failover scenarios, for docs/reliability.md ("Broker cluster failover")."""
    results = Results("cluster")
    yield results
    if results.rows:
        results.save()
