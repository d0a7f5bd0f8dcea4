"""The kind cluster definition, the kind values and compose.yaml agree with the chart and the images."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.chart.rendering import CHART_DIR, KUBE_VERSION, ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
CHART_VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
APP_SERVICES = ("api", "chat-writer", "message-writer", "webhook-dispatcher", "count-sync")


def test_kind_node_is_ingress_ready_with_host_ports_80_and_443():
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    assert node["image"] == f"kindest/node:{KUBE_VERSION}", "the version the chart is validated against"
    assert 'node-labels: "ingress-ready=true"' in node["kubeadmConfigPatches"][0]
    mapped = {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]}
    assert mapped == {(80, 80), (443, 443)}


def test_ingress_nginx_listens_on_the_ingress_ready_node():
    values = yaml.safe_load((ROOT / "helm" / "kind" / "ingress-nginx.yaml").read_text())["controller"]
    assert values["hostPort"]["enabled"] is True
    assert values["nodeSelector"]["ingress-ready"] == "true"
    assert values["ingressClassResource"]["name"] == CHART_VALUES["api"]["ingress"]["className"]


def kube_mk_variable(name: str) -> str:
    text = (ROOT / "mk" / "kube.mk").read_text()
    match = re.search(rf"^{name} \?= (\S+)$", text, re.MULTILINE)
    assert match, name
    return match.group(1)


def test_a_stock_kube_prometheus_stack_picks_up_the_chart_defaults():
    """kind runs kube-prometheus-stack with its stock Prometheus selectors; the chart's defaults must match them."""
    values = yaml.safe_load((ROOT / "helm" / "kind" / "kube-prometheus-stack.yaml").read_text())
    spec = values["prometheus"]["prometheusSpec"]
    for stock in ("serviceMonitorSelectorNilUsesHelmValues", "ruleSelectorNilUsesHelmValues"):
        assert stock not in spec, f"{stock}: the kind path must prove the stock selector works"
    text = (ROOT / "mk" / "kube.mk").read_text()
    release, namespace = re.search(
        r"helm upgrade --install (\S+) kube-prometheus-stack .*?--namespace (\S+)", text, re.S
    ).groups()
    # A stock Prometheus selects release: <its release name>.
    assert CHART_VALUES["metrics"]["serviceMonitor"]["labels"] == {"release": release}
    assert CHART_VALUES["metrics"]["prometheusRule"]["labels"] == {"release": release}
    # The dashboard stays in the release namespace (a monitoring namespace may not exist): the Grafana sidecar
    # reads every namespace, with kube-prometheus-stack's label.
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert sidecar["searchNamespace"] == "ALL"
    assert {sidecar["label"]: sidecar["labelValue"]} == CHART_VALUES["metrics"]["dashboard"]["labels"]
    assert CHART_VALUES["metrics"]["dashboard"]["namespace"] == ""
    assert CHART_VALUES["networkPolicy"]["prometheus"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": namespace
    }


def test_kind_installs_a_keda_release_tested_on_the_node_kubernetes_version():
    # KEDA's compatibility matrix: 2.17 supports Kubernetes 1.30-1.32, 2.18 supports 1.31-1.33.
    tested = {"2.16": (29, 31), "2.17": (30, 32), "2.18": (31, 33)}
    keda = re.fullmatch(r"~(\d+\.\d+)\.\d+", kube_mk_variable("KEDA_CHART_VERSION"))
    assert keda, "KEDA pinned by minor version"
    low, high = tested[keda.group(1)]
    node_minor = int(KUBE_VERSION.split(".")[1])
    assert low <= node_minor <= high, f"KEDA {keda.group(1)} is not tested on Kubernetes 1.{node_minor}"


def test_compose_builds_every_service_image_from_its_dockerfile():
    for name in (*APP_SERVICES, "migrate"):
        build = COMPOSE["services"][name]["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]).is_file()


def test_compose_runs_migrations_first_and_hardens_the_services():
    for name in APP_SERVICES:
        service = COMPOSE["services"][name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
    assert COMPOSE["services"]["migrate"]["entrypoint"] == ["python", "-m", "chat_common.ops.migrate"]
    assert COMPOSE["services"]["count-sync"]["command"][0] == "--every"
    redis = COMPOSE["services"]["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"


def test_compose_and_chart_run_the_same_dependency_versions():
    images = {name: COMPOSE["services"][name]["image"] for name in ("mariadb", "redis", "rabbitmq", "elasticsearch")}
    for name, image in images.items():
        chart_image = CHART_VALUES[name]["image"]
        assert image.endswith(f":{chart_image['tag']}"), (name, image, chart_image)
        reference = f"{chart_image['registry']}/{chart_image['repository']}".removeprefix("docker.io/library/")
        assert reference == image.split(":")[0].removeprefix("docker.io/library/"), name


def test_compose_publishes_ports_on_localhost_only():
    for name, service in COMPOSE["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_images_reach_the_kind_node_as_an_archive_of_its_platform():
    """`kind load docker-image` fails with Docker's containerd image store ("content digest ... not found"): the
    images target saves the node's platform alone and loads that archive (what `make images` would run)."""
    printed = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    dry_run = "\n".join(line for line in printed.splitlines() if not line.startswith("#"))  # without comments
    assert "kind load docker-image" not in dry_run
    assert "kind load image-archive" in dry_run
    assert 'docker image save --platform "$platform"' in dry_run
    for name in ("api", "chat-writer", "message-writer", "webhook-dispatcher", "counter-cron", "operator"):
        assert f"chat-system/{name}:dev" in dry_run
