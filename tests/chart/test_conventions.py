"""Issue #21's conventions: what a chart owes the platforms and the people that run it, besides installing.

Pod labels that a chart release alone does not change, ids a restricted platform may assign, one dashboard per
release, NOTES and `helm test` that point at what exists, a version that says an upgrade breaks.
"""

from __future__ import annotations

import pytest

from tests.chart.rendering import KIND_CLUSTER_APIS, pod_labels, pod_specs, render

EVERY_POD = {
    "mariadb": {"metrics": {"enabled": True}},
    "redis": {"metrics": {"enabled": True}},
}
DEPENDENCIES = {"mariadb", "redis", "rabbitmq", "elasticsearch", "pushgateway", "redis-cluster-init"}
IDS = ("runAsUser", "runAsGroup", "fsGroup")


def _component(labels: dict) -> str | None:
    return labels.get("app.kubernetes.io/component")


@pytest.mark.parametrize("values", [EVERY_POD, {"redis": {"mode": "cluster"}}], ids=["every-pod", "redis-cluster"])
def test_a_new_chart_version_alone_restarts_no_pod(values):
    """helm.sh/chart changes with every chart version: on a pod template it would restart every pod, the
    databases too. A bundled dependency's pods do not carry chat-system's version either."""
    for m, _ in pod_specs(render(values, api_versions=KIND_CLUSTER_APIS)):
        if m.kind == "Pod":
            continue  # the helm test pod is an object of its own, not a template
        labels = pod_labels(m)
        assert "helm.sh/chart" not in labels, m
        assert "helm.sh/chart" in m.obj["metadata"]["labels"], m  # the objects themselves keep it
        if _component(labels) in DEPENDENCIES:
            assert "app.kubernetes.io/version" not in labels, m


def test_the_cluster_operator_copies_no_chart_version_onto_its_pods():
    (cluster,) = [
        m
        for m in render({"rabbitmq": {"replicas": 3, "clusterOperator": True}, "auth": {"existingSecret": "urls"}})
        if m.kind == "RabbitmqCluster"
    ]
    assert "helm.sh/chart" not in cluster.obj["metadata"]["labels"]


def _without_ids() -> dict:
    """Values that leave every user, group and fsGroup to the platform (OpenShift's restricted SCC)."""
    nulls = dict.fromkeys(IDS)
    user = {"runAsUser": None, "runAsGroup": None}  # (a null for a key the defaults lack would stay a null)
    return {
        "podSecurityContext": nulls,
        "mariadb": {"podSecurityContext": nulls, "metrics": {"enabled": True, "containerSecurityContext": user}},
        "redis": {"podSecurityContext": nulls, "metrics": {"enabled": True, "containerSecurityContext": user}},
        "rabbitmq": {"podSecurityContext": nulls},
        "elasticsearch": {"podSecurityContext": nulls},
        "pushgateway": {"podSecurityContext": user},
    }


@pytest.mark.parametrize("redis_mode", ["standalone", "cluster"])
def test_every_fixed_id_can_be_left_to_the_platform(redis_mode):
    values = _without_ids()
    values["redis"]["mode"] = redis_mode
    for m, pod in pod_specs(render(values)):
        contexts = [pod.get("securityContext") or {}] + [
            c.get("securityContext") or {} for c in [*(pod.get("initContainers") or []), *pod["containers"]]
        ]
        for context in contexts:
            assert not set(IDS) & set(context), f"{m}: {context}"
        assert pod["securityContext"]["runAsNonRoot"] is True, m
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, m
