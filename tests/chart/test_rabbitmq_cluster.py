"""The chart's clustered RabbitMQ: 3 nodes by Kubernetes peer discovery, or a RabbitmqCluster of the Cluster Operator.

The variants ``rabbitmq-cluster`` and ``rabbitmq-operator`` (tests/chart/conftest.py) also go through every
per-variant check of test_chart.py (lint, schemas, security, network-policy coverage, credentials).
"""

from __future__ import annotations

import base64

import helm_python as helm
import pytest

from tests.chart.conftest import rendered
from tests.chart.rendering import NAMESPACE, containers, of_kind, pod_specs, render
from tests.chart.test_chart import component, env_of, named


def _rabbitmq_statefulset(manifests):
    return named(manifests, "StatefulSet", "rabbitmq")


def test_a_single_node_is_the_default_and_queues_are_quorum():
    manifests = rendered("default")
    sts = _rabbitmq_statefulset(manifests)
    assert sts.obj["spec"]["replicas"] == 1
    assert "podManagementPolicy" not in sts.obj["spec"]
    config = named(manifests, "ConfigMap", "config").obj["data"]
    assert config["QUEUE_TYPE"] == "quorum"
    broker_config = named(manifests, "ConfigMap", "rabbitmq-conf").obj["data"]
    # The retry tiers dead-letter at-least-once; an unconfirmed message is sent again after 30 s, not 3 minutes.
    assert "dead_letter_worker_publisher_confirm_timeout, 30000" in broker_config["advanced.config"]
    assert "chat-system.conf" not in broker_config  # no peer discovery for one node
    assert not [m for m in of_kind(manifests, "PodDisruptionBudget") if component(m) == "rabbitmq"]


def test_three_replicas_form_a_cluster_by_kubernetes_peer_discovery():
    manifests = rendered("rabbitmq-cluster")
    sts = _rabbitmq_statefulset(manifests).obj
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = sts["spec"]["serviceName"]
    pod = sts["spec"]["template"]["spec"]
    (broker,) = [c for c in pod["containers"] if c["name"] == "rabbitmq"]
    env = env_of(broker)
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["RABBITMQ_NODENAME"]["value"] == f"rabbit@$(POD_NAME).{headless}.{NAMESPACE}.svc.cluster.local"
    conf = named(manifests, "ConfigMap", "rabbitmq-conf").obj["data"]
    assert "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s" in conf["chat-system.conf"]
    assert (
        f"cluster_formation.k8s.hostname_suffix = .{headless}.{NAMESPACE}.svc.cluster.local"
        in (conf["chat-system.conf"])
    )
    assert "cluster_partition_handling = pause_minority" in conf["chat-system.conf"]
    assert "rabbitmq_peer_discovery_k8s" in conf["enabled_plugins"]
    mounts = {m["mountPath"]: m for m in broker["volumeMounts"]}
    assert mounts["/etc/rabbitmq/conf.d/20-chat-system.conf"]["subPath"] == "chat-system.conf"
    assert mounts["/etc/rabbitmq/enabled_plugins"]["subPath"] == "enabled_plugins"
    # One shared Erlang cookie, from the Secret, copied owner-only into the data directory before the broker starts.
    (cookie,) = pod["initContainers"]
    assert "chmod 600 /var/lib/rabbitmq/.erlang.cookie" in cookie["command"][-1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["erlang-cookie"]["secret"]["items"] == [
        {"key": "RABBITMQ_ERLANG_COOKIE", "path": "RABBITMQ_ERLANG_COOKIE"}
    ]
    main = [s for s in of_kind(manifests, "Secret") if "RABBITMQ_ERLANG_COOKIE" in (s.obj.get("data") or {})]
    assert len(main) == 1
    assert len(base64.b64decode(main[0].obj["data"]["RABBITMQ_ERLANG_COOKIE"])) >= 32


def test_cluster_nodes_spread_over_hosts_and_keep_a_majority_through_disruptions():
    manifests = rendered("rabbitmq-cluster")
    pod = _rabbitmq_statefulset(manifests).obj["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "rabbitmq"
    (pdb,) = [m for m in of_kind(manifests, "PodDisruptionBudget") if component(m) == "rabbitmq"]
    assert pdb.obj["spec"]["maxUnavailable"] == 1


def test_cluster_nodes_may_reach_each_other_through_the_network_policy():
    manifests = rendered("rabbitmq-cluster")
    policy = named(manifests, "NetworkPolicy", "rabbitmq").obj
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    for port in ("epmd", "dist"):
        (peer,) = by_port[port]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "rabbitmq"
    for _, pod in pod_specs(manifests):
        for c in containers(pod):
            if c["name"] == "rabbitmq":
                named_ports = {p["name"] for p in c["ports"]}
                assert {"epmd", "dist"} <= named_ports


def test_the_cluster_operator_gets_a_rabbitmqcluster_instead_of_the_statefulset():
    manifests = rendered("rabbitmq-operator")
    assert not [m for m in of_kind(manifests, "StatefulSet") if component(m) == "rabbitmq"]
    (cluster,) = of_kind(manifests, "RabbitmqCluster")
    spec = cluster.obj["spec"]
    assert spec["replicas"] == 3
    assert "dead_letter_worker_publisher_confirm_timeout, 30000" in spec["rabbitmq"]["advancedConfig"]
    spread = spec["override"]["statefulSet"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] for c in spread} == {cluster.name}
    (pdb,) = [m for m in of_kind(manifests, "PodDisruptionBudget") if component(m) == "rabbitmq"]
    assert pdb.obj["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": cluster.name}


def test_the_cluster_operator_needs_the_urls_in_an_existing_secret():
    with pytest.raises(helm.HelmError, match="clusterOperator"):
        render({"rabbitmq": {"replicas": 3, "clusterOperator": True}})


def test_classic_queues_on_a_cluster_are_refused():
    with pytest.raises(helm.HelmError, match="queueType classic"):
        render({"rabbitmq": {"replicas": 3}, "config": {"queueType": "classic"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rabbitmq": {"replicas": 2}}, "replicas"),  # no majority survives the loss of one of two
        ({"rabbitmq": {"replicas": 0}}, "replicas"),
        ({"config": {"queueType": "mirrored"}}, "queueType"),
        ({"rabbitmq": {"erlangCookie": "has spaces"}}, "erlangCookie"),
    ],
)
def test_schema_rejects_wrong_cluster_values(values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)
