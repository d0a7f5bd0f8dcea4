"""The webhook dispatcher in the chart (issue #25): one scaler, its probes and settings, its metrics scraped, and
the egress policy that lets it reach the cluster DNS, its database and public addresses only.

The dispatcher connects to URLs tenants choose. Its own code refuses private, loopback and link-local addresses
(server-side request forgery); the egress NetworkPolicy is the defence in depth behind that check, so the tests
below evaluate it as a network plugin would, address by address.
"""

from __future__ import annotations

import ipaddress
import re

import helm_python as helm
import pytest

from tests.chart.conftest import EXTERNAL_URLS, VARIANTS, rendered
from tests.chart.rendering import (
    KEDA_APIS,
    KIND_CLUSTER_APIS,
    NAMESPACE,
    ROOT,
    Manifest,
    containers,
    load_values_file,
    of_kind,
    pod_labels,
    render,
)
from tests.chart.test_deploy_safety import admits, matches

DISPATCHER = "webhook-dispatcher"
NAME = f"chat-chat-system-{DISPATCHER}"
KIND_VALUES = load_values_file(ROOT / "helm" / "values-kind.yaml")
# Addresses a tenant could aim an endpoint at inside the cluster or the provider's network.
PRIVATE = [
    "10.0.0.5",  # RFC 1918 (kind's pods and Services live in 10.244/16 and 10.96/12)
    "172.16.3.4",
    "172.31.255.1",
    "192.168.1.10",
    "100.64.0.1",  # carrier-grade NAT, some clusters' pod ranges
    "169.254.169.254",  # the cloud metadata service
    "127.0.0.1",
    "fd00::1",  # IPv6 unique local
    "fe80::1",  # IPv6 link-local
    "::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"]


def component(m: Manifest) -> str | None:
    return (m.obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def only(manifests, kind: str, comp: str = DISPATCHER) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if component(m) == comp]
    assert len(found) == 1, [str(m) for m in found]
    return found[0]


def dispatcher_container(manifests) -> dict:
    (container,) = only(manifests, "Deployment").obj["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def egress_admits(
    policies: list[Manifest],
    source: dict[str, str],
    port: int,
    *,
    protocol: str = "TCP",
    ip: str | None = None,
    pod: dict[str, str] | None = None,
    namespace: str = NAMESPACE,
) -> bool:
    """Whether the egress policies selecting the source pod let it open a connection to an address (ip) or to a pod
    (its labels and namespace) on a port, with Kubernetes' semantics: a pod no Egress policy selects may go
    anywhere; otherwise some rule of one of them must admit the port and the peer."""
    selecting = [
        p
        for p in policies
        if "Egress" in (p.obj["spec"].get("policyTypes") or []) and matches(p.obj["spec"]["podSelector"], source)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy.obj["spec"].get("egress") or []:
            ports = rule.get("ports")
            if ports and not any(
                p.get("protocol", "TCP") == protocol and p.get("port") in (None, port)
                for p in ports  # (every port this chart writes in an egress rule is a number)
            ):
                continue
            peers = rule.get("to")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    if ip is not None and in_block(ip, peer["ipBlock"]):
                        return True
                    continue
                if pod is None:
                    continue
                if "namespaceSelector" in peer:
                    in_namespace = matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                else:
                    in_namespace = namespace == policy.obj["metadata"]["namespace"]
                if in_namespace and ("podSelector" not in peer or matches(peer["podSelector"], pod)):
                    return True
    return False


def in_block(ip: str, block: dict) -> bool:
    """An address in an ipBlock: inside its cidr and outside every except (of the same IP version)."""
    address = ipaddress.ip_address(ip)

    def contains(cidr: str) -> bool:
        network = ipaddress.ip_network(cidr)
        return network.version == address.version and address in network

    return contains(block["cidr"]) and not any(contains(c) for c in block.get("except") or [])


def source(manifests) -> dict[str, str]:
    return pod_labels(only(manifests, "Deployment"))


# -- Scaling -------------------------------------------------------------------------------------------------------


def test_the_dispatcher_has_exactly_one_scaler(variant):
    values, apis = VARIANTS[variant]
    manifests = rendered(variant)
    deployment = only(manifests, "Deployment")
    targets = [
        m
        for m in manifests
        if m.kind in ("ScaledObject", "HorizontalPodAutoscaler")
        and m.obj["spec"]["scaleTargetRef"]["name"] == deployment.name
    ]
    enabled = (values or {}).get("webhookDispatcher", {}).get("autoscaling", {}).get("enabled", True)
    if not enabled:
        assert targets == []
        return
    assert len(targets) == 1, [str(t) for t in targets]
    assert targets[0].kind == ("ScaledObject" if set(KEDA_APIS) <= set(apis) else "HorizontalPodAutoscaler")
    assert "replicas" not in deployment.obj["spec"]  # the scaler owns the replica count, upgrades never reset it


def test_fixed_replicas_without_autoscaling():
    manifests = render({"webhookDispatcher": {"autoscaling": {"enabled": False}, "replicaCount": 3}})
    assert only(manifests, "Deployment").obj["spec"]["replicas"] == 3
    assert not [
        m for m in manifests if m.kind in ("ScaledObject", "HorizontalPodAutoscaler") and component(m) == DISPATCHER
    ]


def kind_prometheus() -> str:
    """The in-cluster URL of the Prometheus `make kind-up` installs (the Service `make prometheus` forwards)."""
    text = (ROOT / "mk" / "kube.mk").read_text()
    namespace, service = re.search(r"kubectl -n (\S+) port-forward svc/(\S+) 9090:9090", text).groups()
    return f"http://{service}.{namespace}.svc:9090"


def test_keda_scales_the_dispatcher_on_its_backlog_read_from_the_kind_prometheus():
    manifests = rendered("kind")
    scaled = only(manifests, "ScaledObject")
    (trigger,) = scaled.obj["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"] == {
        "serverAddress": kind_prometheus(),
        # Every endpoint once (max by endpoint: a lease changing hands may report one twice for a moment).
        "query": f'sum(max by (endpoint) (chat_webhook_backlog_events{{namespace="{NAMESPACE}", job="{NAME}"}}))',
        "threshold": "200",  # helm/values-kind.yaml
        "activationThreshold": "0",
        "ignoreNullValues": "true",
    }
    assert "authenticationRef" not in trigger  # an in-cluster Prometheus: nothing to authenticate
    spec = scaled.obj["spec"]
    assert spec["scaleTargetRef"]["name"] == NAME and spec["minReplicaCount"] >= 1
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}
    # Installing KEDA later and upgrading: the ScaledObject takes the chart's HPA over
    # (templates/writers/autoscaling.yaml says how).
    assert scaled.obj["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    hpa = only(rendered("kind-keda-off"), "HorizontalPodAutoscaler")
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == hpa.name
    assert hpa.obj["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_scaler_takes_its_knobs_from_values():
    scaling = {
        "backlogEvents": 50,
        "activationBacklogEvents": 5,
        "prometheusServerAddress": "http://prometheus-operated.observability.svc:9090",
        "minReplicas": 2,
        "maxReplicas": 7,
        "pollingInterval": 15,
        "scaleDownStabilizationSeconds": 60,
        "fallback": {"failureThreshold": 0, "replicas": 1},
    }
    manifests = render({"webhookDispatcher": {"autoscaling": scaling}}, api_versions=KEDA_APIS, namespace="team-a")
    spec = only(manifests, "ScaledObject").obj["spec"]
    metadata = spec["triggers"][0]["metadata"]
    assert metadata["serverAddress"] == "http://prometheus-operated.observability.svc:9090"
    assert metadata["threshold"] == "50" and metadata["activationThreshold"] == "5"
    assert 'namespace="team-a"' in metadata["query"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["pollingInterval"]) == (2, 7, 15)
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 60
    )
    assert "fallback" not in spec
    with pytest.raises(helm.HelmError, match=r"webhookDispatcher\.autoscaling\.minReplicas"):
        render({"webhookDispatcher": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}})


# -- The Deployment ------------------------------------------------------------------------------------------------


def test_the_dispatcher_runs_with_http_probes_on_its_metrics_port():
    manifests = rendered("kind")
    pod = only(manifests, "Deployment").obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "chat-system/webhook-dispatcher:dev"
    assert container["command"] == ["python", "-m", "webhook_dispatcher"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    assert env_of(container)["WEBHOOK_DISPATCHER_PORT"]["value"] == "9090"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}  # the database answers
    # On SIGTERM it finishes the deliveries under way and releases its leases.
    assert 0 < pod["terminationGracePeriodSeconds"] <= 60
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_dispatcher_gets_the_database_and_nothing_of_the_broker_redis_or_tokens():
    env = env_of(dispatcher_container(rendered("default")))
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "chat-chat-system", "key": "DATABASE_URL"}
    for absent in ("REDIS_URL", "RABBITMQ_URL", "RABBITMQ_CA_FILE", "ELASTICSEARCH_URL", "DATABASE_READ_URL"):
        assert absent not in env, absent
    assert "TOKEN_SEALING_KEY" not in env and "ADMIN_API_KEY" not in env
    # The DML user of the writers, never the migrations' schema user.
    writer = env_of(
        only(rendered("default"), "Deployment", "message-writer").obj["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["DATABASE_URL"] == writer["DATABASE_URL"]


def test_webhook_settings_reach_the_api_and_the_dispatcher():
    webhooks = {
        "allowCIDRs": ["10.20.0.0/16", "fd12::/16"],
        "denyCIDRs": ["34.118.224.0/20"],
        "allowHttp": True,
        "retryScheduleSeconds": [1, 60, 1000000],
        "timeoutSeconds": 2.5,
        "maxResponseBytes": 2097152,
        "maxInFlight": 4,
        "pollIntervalMs": 250,
        "disableAfterSeconds": 864000,
        "leaseSeconds": 30,
    }
    manifests = render({"webhooks": webhooks})
    config = only(manifests, "ConfigMap", "config")
    data = config.obj["data"]
    assert data["WEBHOOK_ALLOW_CIDRS"] == "10.20.0.0/16,fd12::/16"
    assert data["WEBHOOK_DENY_CIDRS"] == "34.118.224.0/20"
    assert data["WEBHOOK_ALLOW_HTTP"] == "true"
    for comp in ("api", DISPATCHER):  # the API checks URLs at registration, the dispatcher at every delivery
        (container,) = only(manifests, "Deployment", comp).obj["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": config.name}} in container["envFrom"], comp
    env = {k: v.get("value") for k, v in env_of(dispatcher_container(manifests)).items()}
    assert env["WEBHOOK_RETRY_SCHEDULE"] == "1,60,1000000"  # whole numbers as written, not 1e+06
    assert env["WEBHOOK_TIMEOUT_SECONDS"] == "2.5"
    assert env["WEBHOOK_MAX_RESPONSE_BYTES"] == "2097152"
    assert env["WEBHOOK_MAX_IN_FLIGHT"] == "4"
    assert env["WEBHOOK_POLL_INTERVAL_MS"] == "250"
    assert env["WEBHOOK_DISABLE_AFTER_SECONDS"] == "864000"
    assert env["WEBHOOK_LEASE_SECONDS"] == "30"
    defaults = only(rendered("default"), "ConfigMap", "config").obj["data"]
    assert (defaults["WEBHOOK_ALLOW_CIDRS"], defaults["WEBHOOK_DENY_CIDRS"], defaults["WEBHOOK_ALLOW_HTTP"]) == (
        "",
        "",
        "false",
    )


@pytest.mark.parametrize(
    "webhooks",
    [{"allowCIDRs": ["10.0.0.0"]}, {"allowCIDRs": ["example.com/8"]}, {"denyCIDRs": ["10.0.0.0/33"]}],
    ids=["no-prefix", "a-name", "prefix-too-long"],
)
def test_only_address_blocks_are_accepted(webhooks):
    with pytest.raises(helm.HelmValuesError, match="CIDRs"):
        render({"webhooks": webhooks})


def test_the_dispatcher_has_a_disruption_budget():
    pdb = only(rendered("kind"), "PodDisruptionBudget")
    assert pdb.obj["spec"]["maxUnavailable"] == 1
    assert matches(pdb.obj["spec"]["selector"], source(rendered("kind")))


# -- Metrics ---------------------------------------------------------------------------------------------------------


def test_the_dispatchers_metrics_are_scraped_and_only_prometheus_reaches_them():
    manifests = rendered("kind")
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert service.obj["spec"]["clusterIP"] == "None"
    assert matches(monitor.obj["spec"]["selector"], service.obj["metadata"]["labels"])
    (endpoint,) = monitor.obj["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    (port,) = service.obj["spec"]["ports"]
    assert port == {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    assert service.obj["spec"]["selector"] == only(manifests, "Deployment").obj["spec"]["selector"]["matchLabels"]
    policies = of_kind(manifests, "NetworkPolicy")
    prometheus = {"app.kubernetes.io/name": "prometheus"}
    assert admits(policies, source(manifests), "metrics", prometheus, "monitoring")
    assert not admits(policies, source(manifests), "metrics", {"run": "acme-client"}, NAMESPACE)
    api = pod_labels(only(manifests, "Deployment", "api"))
    assert not admits(policies, source(manifests), "metrics", api, NAMESPACE)


# -- Egress ----------------------------------------------------------------------------------------------------------


def test_the_egress_policy_admits_dns_the_bundled_database_and_public_receivers_only():
    manifests = rendered("kind")
    policies = of_kind(manifests, "NetworkPolicy")
    me = source(manifests)
    dns = {"k8s-app": "kube-dns"}
    assert egress_admits(policies, me, 53, protocol="UDP", pod=dns, namespace="kube-system")
    assert egress_admits(policies, me, 53, protocol="TCP", pod=dns, namespace="kube-system")
    assert not egress_admits(policies, me, 53, protocol="UDP", pod=dns, namespace="default")
    mariadb = pod_labels(only(manifests, "StatefulSet", "mariadb"))
    assert egress_admits(policies, me, 3306, pod=mariadb)
    # And the database's own ingress policy admits the dispatcher.
    assert admits(policies, mariadb, "mysql", me, NAMESPACE)
    for other in ("redis", "rabbitmq", "elasticsearch"):
        labels = pod_labels(only(manifests, "StatefulSet", other))
        port = {"redis": 6379, "rabbitmq": 5672, "elasticsearch": 9200}[other]
        assert not egress_admits(policies, me, port, pod=labels), other
    assert not egress_admits(policies, me, 8080, pod=pod_labels(only(manifests, "Deployment", "api")))
    for ip in PUBLIC:
        assert egress_admits(policies, me, 443, ip=ip), ip
        assert egress_admits(policies, me, 80, ip=ip), ip
        assert not egress_admits(policies, me, 22, ip=ip), ip  # receivers only: https and http
        assert not egress_admits(policies, me, 3306, ip=ip), ip
    for ip in PRIVATE:
        for port in (443, 80):
            assert not egress_admits(policies, me, port, ip=ip), (ip, port)


def test_allow_and_deny_lists_and_extra_rules_shape_the_egress():
    extra = [{"to": [{"ipBlock": {"cidr": "10.40.0.7/32"}}], "ports": [{"port": 3306, "protocol": "TCP"}]}]
    values = {
        "webhooks": {"allowCIDRs": ["10.30.0.0/16", "fd30::/64"], "denyCIDRs": ["34.118.224.0/20", "2600:1900::/28"]},
        "networkPolicy": {"webhookDispatcher": {"extraEgress": extra}},
    }
    manifests = render(values)
    policies = of_kind(manifests, "NetworkPolicy")
    me = source(manifests)
    # Allow-listed receivers, on any port (the application admits the block, whatever the port).
    assert egress_admits(policies, me, 8443, ip="10.30.4.5")
    assert egress_admits(policies, me, 443, ip="fd30::5")
    assert not egress_admits(policies, me, 443, ip="10.31.0.1")
    # Denied blocks (e.g. a cluster's public pod or service range) are left out of the internet.
    assert not egress_admits(policies, me, 443, ip="34.118.230.1")
    assert not egress_admits(policies, me, 443, ip="2600:1900::1")
    assert egress_admits(policies, me, 443, ip="34.119.0.1")
    # Extra rules, e.g. an external database at a private address.
    assert egress_admits(policies, me, 3306, ip="10.40.0.7")
    assert not egress_admits(policies, me, 3306, ip="10.40.0.8")


def test_receiver_ports_are_a_value():
    manifests = render({"networkPolicy": {"webhookDispatcher": {"receiverPorts": [443, 8443]}}})
    policies, me = of_kind(manifests, "NetworkPolicy"), source(manifests)
    assert egress_admits(policies, me, 8443, ip="8.8.8.8")
    assert not egress_admits(policies, me, 80, ip="8.8.8.8")
    every = render({"networkPolicy": {"webhookDispatcher": {"receiverPorts": []}}})
    policies, me = of_kind(every, "NetworkPolicy"), source(every)
    assert egress_admits(policies, me, 9999, ip="8.8.8.8")
    assert not egress_admits(policies, me, 9999, ip="10.0.0.1")


def test_an_external_database_is_reached_through_extra_egress_only():
    policies = of_kind(rendered("external-urls"), "NetworkPolicy")
    me = source(rendered("external-urls"))
    assert not egress_admits(policies, me, 3306, ip="10.1.2.3")
    from tests.chart.rendering import notes

    assert "WARNING: the database is external" in notes(EXTERNAL_URLS)
    extra = [{"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 3306, "protocol": "TCP"}]}]
    values = {**EXTERNAL_URLS, "networkPolicy": {"webhookDispatcher": {"extraEgress": extra}}}
    manifests = render(values)
    assert egress_admits(of_kind(manifests, "NetworkPolicy"), source(manifests), 3306, ip="10.1.2.3")
    assert "WARNING: the database is external" not in notes(values)


def test_the_production_example_lets_the_dispatcher_reach_its_database():
    """helm/values-external.yaml: the database is mysql.db.svc (a pod of namespace db), a private address."""
    manifests = rendered("external-secret")
    policies, me = of_kind(manifests, "NetworkPolicy"), source(manifests)
    assert egress_admits(policies, me, 3306, pod={"app": "mysql"}, namespace="db")
    assert not egress_admits(policies, me, 6380, pod={"app": "redis"}, namespace="db")
    assert not egress_admits(policies, me, 3306, pod={"app": "mysql"}, namespace="other")


def test_only_the_dispatcher_has_its_egress_restricted(variant):
    """The other components' egress stays open (external databases have addresses the chart cannot know)."""
    values, _ = VARIANTS[variant]
    manifests = rendered(variant)
    restricted = [p for p in of_kind(manifests, "NetworkPolicy") if "Egress" in p.obj["spec"]["policyTypes"]]
    if values and values.get("networkPolicy", {}).get("enabled") is False:
        assert restricted == []
        return
    (policy,) = restricted
    assert policy.obj["spec"]["policyTypes"] == ["Egress"]
    assert (
        policy.obj["spec"]["podSelector"]["matchLabels"]
        == only(manifests, "Deployment").obj["spec"]["selector"]["matchLabels"]
    )
    for m in of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet"):
        if component(m) != DISPATCHER:
            assert not matches(policy.obj["spec"]["podSelector"], pod_labels(m)), m


def test_the_egress_policy_takes_the_cluster_dns_selectors():
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
        "podSelector": {"matchLabels": {"k8s-app": None, "app": "coredns"}},  # Helm merges maps: null drops a default
    }
    manifests = render({"networkPolicy": {"dns": dns}}, api_versions=KIND_CLUSTER_APIS)
    policies, me = of_kind(manifests, "NetworkPolicy"), source(manifests)
    assert egress_admits(policies, me, 53, protocol="UDP", pod={"app": "coredns"}, namespace="dns")
    assert not egress_admits(policies, me, 53, protocol="UDP", pod={"k8s-app": "kube-dns"}, namespace="kube-system")


def test_alert_thresholds_are_values():
    values = {"metrics": {"prometheusRule": {"webhookBacklogAgeSeconds": 900, "webhookFailingMinutes": 45}}}
    (rule,) = of_kind(render(values, api_versions=KIND_CLUSTER_APIS), "PrometheusRule")
    rules = {r["alert"]: r for g in rule.obj["spec"]["groups"] for r in g["rules"]}
    assert rules["ChatWebhookBacklogOld"]["expr"].endswith("> 900")
    assert rules["ChatWebhookEndpointFailing"]["for"] == "45m"


def test_the_kind_values_run_the_dispatcher_small():
    dispatcher = KIND_VALUES["webhookDispatcher"]
    assert dispatcher["autoscaling"]["backlogEvents"] == 200
    container = dispatcher_container(rendered("kind"))
    assert container["resources"] == dispatcher["resources"]
    assert [c["name"] for c in containers(only(rendered("kind"), "Deployment").obj["spec"]["template"]["spec"])] == [
        DISPATCHER
    ]
