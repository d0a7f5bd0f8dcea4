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
    settings = _settings(conf["chat-system.conf"])
    assert settings["cluster_formation.peer_discovery_backend"] == "rabbit_peer_discovery_k8s"
    # RabbitMQ 4.1's plugin derives the seed (pod -0) from the node name and ignores the 3.x/4.0 k8s.* settings.
    assert not [key for key in settings if key.startswith("cluster_formation.k8s.")]
    assert settings["cluster_formation.target_cluster_size_hint"] == "3"
    assert settings["cluster_partition_handling"] == "pause_minority"
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


def _settings(conf: str) -> dict[str, str]:
    """The key = value lines of a rabbitmq.conf (sysctl format)."""
    lines = [line.split("=", 1) for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in lines}


@pytest.mark.parametrize("replicas", [3, 5])
def test_quorum_queues_declared_before_the_cluster_formed_still_get_a_member_per_node(replicas):
    """On the first start pod -0 runs alone for a moment. It takes no clients until a majority of the nodes runs
    (readiness), and every quorum queue grows onto the nodes that join (continuous membership reconciliation)."""
    manifests = render({"rabbitmq": {"replicas": replicas}})
    settings = _settings(named(manifests, "ConfigMap", "rabbitmq-conf").obj["data"]["chat-system.conf"])
    assert settings["quorum_queue.continuous_membership_reconciliation.enabled"] == "true"
    assert settings["quorum_queue.continuous_membership_reconciliation.target_group_size"] == str(replicas)
    (broker,) = _rabbitmq_statefulset(manifests).obj["spec"]["template"]["spec"]["containers"]
    probe = broker["readinessProbe"]["exec"]["command"][-1]
    assert f"await_online_nodes {replicas // 2 + 1} " in probe
    single = render()
    (alone,) = _rabbitmq_statefulset(single).obj["spec"]["template"]["spec"]["containers"]
    assert "await_online_nodes" not in " ".join(alone["readinessProbe"]["exec"]["command"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rabbitmq": {"replicas": 3, "persistence": {"enabled": False}}}, "seeds a second cluster"),
        ({"rabbitmq": {"replicas": 3, "persistence": {"existingClaim": "mine"}}}, "serves one node"),
        ({"redis": {"mode": "sentinel", "persistence": {"existingClaim": "mine"}}}, "serves one pod"),
    ],
)
def test_a_cluster_without_a_volume_per_node_is_refused(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


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
    settings = _settings(spec["rabbitmq"]["additionalConfig"])
    assert settings["quorum_queue.continuous_membership_reconciliation.target_group_size"] == "3"
    pod_spec = spec["override"]["statefulSet"]["spec"]["template"]["spec"]
    assert pod_spec["containers"] == []  # required by the operator's CRD; merged by name into its own
    spread = pod_spec["topologySpreadConstraints"]
    assert {c["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] for c in spread} == {cluster.name}
    (pdb,) = [m for m in of_kind(manifests, "PodDisruptionBudget") if component(m) == "rabbitmq"]
    assert pdb.obj["spec"]["selector"]["matchLabels"] == OPERATOR_POD_LABELS | {"app.kubernetes.io/name": cluster.name}


# What the RabbitMQ Cluster Operator labels the pods and the Service of a RabbitmqCluster with (besides its name).
OPERATOR_POD_LABELS = {"app.kubernetes.io/component": "rabbitmq"}


def test_monitoring_and_network_policy_find_the_cluster_operators_pods():
    """The operator's pods and Service carry its labels, not the chart's, and its metrics port is "prometheus"."""
    manifests = rendered("rabbitmq-operator")
    (cluster,) = of_kind(manifests, "RabbitmqCluster")
    labels = OPERATOR_POD_LABELS | {"app.kubernetes.io/name": cluster.name}
    monitor = named(manifests, "ServiceMonitor", "rabbitmq").obj["spec"]
    assert monitor["selector"]["matchLabels"] == labels
    assert [e["port"] for e in monitor["endpoints"]] == ["prometheus"]
    policy = named(manifests, "NetworkPolicy", "rabbitmq").obj["spec"]
    assert policy["podSelector"]["matchLabels"] == labels
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert {5672, 15692, 4369, 25672, 35672} <= set(by_port)
    assert by_port[35672]["ports"][0]["endPort"] == 35682
    for port in (4369, 25672, 35672):
        assert by_port[port]["from"] == [{"podSelector": {"matchLabels": labels}}]
    clients = {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in by_port[5672]["from"]}
    assert {"api", "chat-writer", "message-writer", "operator"} <= clients


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
