"""The custom resource definitions the chart targets, taken from the modules of the projects that publish them.

KEDA (ScaledObject, TriggerAuthentication), prometheus-operator (ServiceMonitor, PodMonitor, PrometheusRule) and the
RabbitMQ cluster-operator (RabbitmqCluster) ship their CRDs inside their Go modules; ``go mod download`` fetches a
module at the pinned version (devtools/control-plane/versions.env) through the Go module proxy, checksum-verified,
into the module cache. Nothing is copied into the repository: a version bump is one line.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chat_devtools.control_plane import versions


@dataclass(frozen=True)
class UpstreamCrds:
    """One project's CRD files inside its module."""

    module: str
    version_key: str  # the key of its version in versions.env
    files: tuple[str, ...]
    group: str  # the API group they serve (what the chart's `auto` switches look for)

    def paths(self) -> list[Path]:
        """The CRD files, downloaded into the module cache when missing."""
        version = versions()[self.version_key]
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{self.module}@{version}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        info = json.loads(result.stdout or "{}")
        if result.returncode != 0 or "Dir" not in info:
            raise RuntimeError(f"go mod download {self.module}@{version}: {info.get('Error') or result.stderr}")
        return [Path(info["Dir"]) / name for name in self.files]


KEDA = UpstreamCrds(
    "github.com/kedacore/keda/v2",
    "KEDA_VERSION",
    (
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "config/crd/bases/keda.sh_scaledjobs.yaml",
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
        "config/crd/bases/keda.sh_clustertriggerauthentications.yaml",
    ),
    "keda.sh",
)
PROMETHEUS_OPERATOR = UpstreamCrds(
    "github.com/prometheus-operator/prometheus-operator",
    "PROMETHEUS_OPERATOR_VERSION",
    tuple(
        f"example/prometheus-operator-crd/monitoring.coreos.com_{kind}.yaml"
        for kind in ("servicemonitors", "podmonitors", "prometheusrules")
    ),
    "monitoring.coreos.com",
)
RABBITMQ_CLUSTER_OPERATOR = UpstreamCrds(
    "github.com/rabbitmq/cluster-operator/v2",
    "RABBITMQ_CLUSTER_OPERATOR_VERSION",
    ("config/crd/bases/rabbitmq.com_rabbitmqclusters.yaml",),
    "rabbitmq.com",
)
ALL = (KEDA, PROMETHEUS_OPERATOR, RABBITMQ_CLUSTER_OPERATOR)
