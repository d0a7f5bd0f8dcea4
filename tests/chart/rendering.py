"""Render the Helm chart offline with Helm's own Go SDK (helm-python-sdk), as `helm template` would.

``Chart.render`` of helm-python-sdk 0.2.2 does not expose two options its library already takes: the Kubernetes
version and the extra API versions the chart sees in ``.Capabilities`` (``helm template --kube-version
--api-versions``). The chart decides KEDA versus HPA and whether to render prometheus-operator objects from
``.Capabilities.APIVersions``, so :func:`render` calls the library's render entry point with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "chat-system"
# kind-config.yaml pins the node image of this Kubernetes version; objects are validated against its schemas.
KUBE_VERSION = "v1.33.1"
RELEASE = "chat"
NAMESPACE = "chat-system"

KEDA_APIS = ("keda.sh/v1alpha1", "keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication")
PROMETHEUS_OPERATOR_APIS = (
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
# What `make kind-up` installs: KEDA and kube-prometheus-stack.
KIND_CLUSTER_APIS = KEDA_APIS + PROMETHEUS_OPERATOR_APIS


@dataclass(frozen=True)
class Manifest:
    """One rendered Kubernetes object and the template it came from."""

    template: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.obj["kind"]

    @property
    def name(self) -> str:
        return self.obj["metadata"]["name"]

    @property
    def hook(self) -> str | None:
        return (self.obj["metadata"].get("annotations") or {}).get("helm.sh/hook")

    def __str__(self) -> str:
        return f"{self.kind}/{self.name} ({self.template})"


@cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def load_values_file(path: Path) -> dict[str, Any]:
    """A values file as Helm parses it (``-f``)."""
    return helm.values_from_yaml(path.read_text())


def render_raw(
    values: dict[str, Any] | None = None,
    *,
    api_versions: Iterable[str] = (),
    kube_version: str = KUBE_VERSION,
    is_upgrade: bool = False,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path -> rendered text, for the values and the cluster capabilities given.

    Like `helm template`, there is no cluster: ``lookup`` finds nothing.
    """
    options = {
        "name": release,
        "namespace": namespace,
        "kube_version": kube_version,
        "api_versions": list(api_versions),
        "is_install": not is_upgrade,
        "is_upgrade": is_upgrade,
    }
    rendered = _native.call_string(
        "helm_render", _chart()._raw(), json.dumps(values) if values is not None else None, json.dumps(options)
    )
    return json.loads(rendered)


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[Manifest]:
    """Every Kubernetes object the chart renders (hooks and test pods included, NOTES.txt not)."""
    manifests = []
    for template, text in sorted(render_raw(values, **kwargs).items()):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(Manifest(template, obj) for obj in yaml.safe_load_all(text) if obj)
    return manifests


def notes(values: dict[str, Any] | None = None, **kwargs: Any) -> str:
    """The rendered NOTES.txt."""
    return next(text for name, text in render_raw(values, **kwargs).items() if name.endswith("NOTES.txt"))


def of_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    """The manifests of one kind."""
    return [m for m in manifests if m.kind == kind]


def pod_specs(manifests: Iterable[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(manifest, pod spec) of every object that runs pods."""
    for m in manifests:
        spec = m.obj.get("spec") or {}
        if m.kind == "Pod":
            yield m, spec
        elif m.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield m, spec["template"]["spec"]
        elif m.kind == "CronJob":
            yield m, spec["jobTemplate"]["spec"]["template"]["spec"]


def pod_labels(manifest: Manifest) -> dict[str, str]:
    """Labels of the pods a workload manifest creates."""
    spec = manifest.obj.get("spec") or {}
    if manifest.kind == "Pod":
        return manifest.obj["metadata"].get("labels") or {}
    if manifest.kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["metadata"].get("labels") or {}
    return spec["template"]["metadata"].get("labels") or {}


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and regular containers of a pod spec."""
    return [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]
