"""The chart variants the tests render: values and the API groups the target cluster serves."""

from __future__ import annotations

from functools import cache

import pytest

from tests.chart.rendering import (
    KIND_CLUSTER_APIS,
    PROMETHEUS_OPERATOR_APIS,
    ROOT,
    Manifest,
    load_values_file,
    render,
)

KIND_VALUES = ROOT / "helm" / "values-kind.yaml"
EXTERNAL_VALUES = ROOT / "helm" / "values-external.yaml"

EXTERNAL_URLS = {
    "mariadb": {"enabled": False},
    "redis": {"enabled": False},
    "rabbitmq": {"enabled": False},
    "elasticsearch": {"enabled": False},
    "externalDatabase": {"url": "mysql+pymysql://chat:pw@mysql.db.svc:3306/chat_system?charset=utf8mb4"},
    "externalRedis": {"url": "redis://:pw@redis.db.svc:6379/0"},
    "externalRabbitmq": {"url": "amqp://chat:pw@rabbitmq.mq.svc:5672/%2F"},
}
MINIMAL = {
    "operator": {"watchNamespaces": ["team-a", "team-b"]},
    "chatWriter": {"autoscaling": {"enabled": False}, "replicaCount": 2},
    "messageWriter": {"autoscaling": {"enabled": False}, "replicaCount": 3},
    "api": {"ingress": {"enabled": False}, "pdb": {"enabled": False}, "autoscaling": {"enabled": True}},
    "networkPolicy": {"enabled": False},
    "pushgateway": {"enabled": False},
    "counterCron": {"pushgatewayUrl": "http://pushgateway.monitoring.svc:9091"},
    "elasticsearch": {"enabled": False},
    "mariadb": {"persistence": {"enabled": False}},
    "redis": {"persistence": {"enabled": False}},
    "rabbitmq": {"persistence": {"enabled": False}},
}

# name -> (values, API groups/kinds served by the cluster)
VARIANTS: dict[str, tuple[dict | None, tuple[str, ...]]] = {
    # `helm install` with no values on a bare cluster: no KEDA (CPU HPAs), no prometheus-operator.
    "default": (None, ()),
    # The same on a cluster with KEDA and kube-prometheus-stack.
    "default-keda": (None, KIND_CLUSTER_APIS),
    # `make deploy` on the cluster `make kind-up` creates.
    "kind": (load_values_file(KIND_VALUES), KIND_CLUSTER_APIS),
    # kind values on a cluster where KEDA is missing.
    "kind-keda-off": (load_values_file(KIND_VALUES), PROMETHEUS_OPERATOR_APIS),
    # Production-style: every dependency external, URLs in an existing Secret.
    "external-secret": (load_values_file(EXTERNAL_VALUES), KIND_CLUSTER_APIS),
    # Every dependency external, URLs given in values.
    "external-urls": (EXTERNAL_URLS, ()),
    # The remaining switches: namespaced operator, fixed replicas, no network policies, no persistence.
    "minimal": (MINIMAL, ()),
    # A 3-node RabbitMQ cluster (peer discovery, quorum queues replicated over it).
    "rabbitmq-cluster": ({"rabbitmq": {"replicas": 3}}, KIND_CLUSTER_APIS),
    # The same as a RabbitmqCluster of the RabbitMQ Cluster Operator; the URLs in a Secret of the user's own.
    "rabbitmq-operator": (
        {"rabbitmq": {"replicas": 3, "clusterOperator": True}, "auth": {"existingSecret": "chat-urls"}},
        KIND_CLUSTER_APIS,
    ),
    # Redis with Sentinel: 3 pods, each a redis-server and a Sentinel (tests/chart/test_redis_ha.py).
    "redis-sentinel": ({"redis": {"mode": "sentinel", "metrics": {"enabled": True}}}, KIND_CLUSTER_APIS),
    # Redis Cluster: 6 pods, 3 masters with a replica each, created by a hook Job.
    "redis-cluster": ({"redis": {"mode": "cluster"}}, KIND_CLUSTER_APIS),
}


@cache
def rendered(variant: str) -> tuple[Manifest, ...]:
    """The objects of one variant (rendered once per session)."""
    values, apis = VARIANTS[variant]
    return tuple(render(values, api_versions=apis))


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    """Each chart variant in turn."""
    return request.param
