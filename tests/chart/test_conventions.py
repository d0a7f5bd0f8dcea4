"""Issue #21's conventions: what a chart owes the platforms and the people that run it, besides installing.

Pod labels that a chart release alone does not change, ids a restricted platform may assign, one dashboard per
release, NOTES and `helm test` that point at what exists, a version that says an upgrade breaks.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import threading

import pytest
import yaml

from tests.chart.rendering import CHART_DIR, KIND_CLUSTER_APIS, notes, pod_labels, pod_specs, render

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


# -- NOTES, helm test, version ----------------------------------------------------------------------------------


def test_notes_name_the_routed_paths_and_no_missing_value():
    values = {"api": {"ingress": {"host": "chat.example.com", "paths": ["/applications"]}}}
    text = notes(values, api_versions=KIND_CLUSTER_APIS)
    assert "<no value>" not in text and "%!" not in text
    assert "http://chat.example.com/applications" in text
    assert "routes /applications only" in text
    assert "/readyz" not in text  # through the ingress it answers 404; by port-forward it says nothing of Redis


@pytest.mark.parametrize(
    ("values", "keys"),
    [
        ({}, {"DATABASE_URL", "MARIADB_PASSWORD", "REDIS_PASSWORD", "RABBITMQ_PASSWORD", "ELASTICSEARCH_PASSWORD"}),
        ({"rabbitmq": {"replicas": 3}}, {"RABBITMQ_PASSWORD", "RABBITMQ_ERLANG_COOKIE"}),
    ],
    ids=["single-node", "rabbitmq-cluster"],
)
def test_notes_list_what_an_existing_secret_must_hold(values, keys):
    values = {**values, "auth": {"existingSecret": "urls"}}
    (line,) = [line for line in notes(values).splitlines() if line.startswith("Secret urls")]
    listed = set(line.split("must hold ", 1)[1].split(", "))
    assert keys <= listed
    needed = set()  # every key a pod reads from the Secret, but the optional ones
    for _, pod in pod_specs(render(values)):
        for c in [*(pod.get("initContainers") or []), *pod["containers"]]:
            env = c.get("env") or []
            refs = [e["valueFrom"]["secretKeyRef"] for e in env if "secretKeyRef" in e.get("valueFrom", {})]
            needed |= {ref["key"] for ref in refs if ref["name"] == "urls" and not ref.get("optional")}
        for volume in pod.get("volumes") or []:
            needed |= {item["key"] for item in (volume.get("secret") or {}).get("items") or []}
    assert needed <= listed, needed - listed


def _test_pod_script() -> tuple[str, str]:
    (pod,) = [m for m in render() if m.kind == "Pod" and m.hook == "test"]
    (container,) = pod.obj["spec"]["containers"]
    return container["command"][2], container["command"][3]


class _Status(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "status": "ok" if self.code == 200 else "degraded"}).encode()
        self.send_response(self.code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("code", [200, 503])
def test_helm_test_passes_only_while_the_dependencies_work(code):
    """`helm test` asks the API's /status, which answers 503 while the database, Redis or RabbitMQ is down."""
    script, url = _test_pod_script()
    assert url.endswith("/status")
    handler = type("Status", (_Status,), {"code": code})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = f"http://127.0.0.1:{server.server_address[1]}/status"
        done = subprocess.run([sys.executable, "-c", script, local], capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (done.returncode == 0) is (code == 200), done
    if code != 200:
        assert "503" in done.stderr and "degraded" in done.stderr


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_chart_version_is_newer_than_every_upgrade_the_readme_documents():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    documented = re.findall(r"^## Upgrading from (\d+\.\d+\.\d+)", (CHART_DIR / "README.md").read_text(), re.M)
    assert documented
    assert all(_version(chart["version"]) > _version(v) for v in documented), (chart["version"], documented)
    assert chart["appVersion"] == chart["version"]


def test_notes_show_where_the_network_policies_expect_the_add_ons():
    """The peers' namespaces are values (defaults: what `make kind-up` installs); NOTES show those in force."""
    observability = {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}
    text = notes({"networkPolicy": {"prometheus": {"namespaceSelector": observability}}})
    assert json.dumps(observability, separators=(",", ":")) in text
    assert '"kubernetes.io/metadata.name":"ingress-nginx"' in text and '"kubernetes.io/metadata.name":"keda"' in text
    policies = render({"networkPolicy": {"prometheus": {"namespaceSelector": observability}}})
    peers = [
        peer
        for m in policies
        if m.kind == "NetworkPolicy"
        for rule in m.obj["spec"].get("ingress") or []
        for peer in rule["from"]
    ]
    assert {
        "namespaceSelector": observability,
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    } in peers
    assert "NetworkPolicies" not in notes({"networkPolicy": {"enabled": False}})
