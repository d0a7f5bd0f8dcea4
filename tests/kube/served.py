"""Which upstream API groups the control plane serves: their CRDs installed from their modules, or removed."""

from __future__ import annotations

import yaml

from chat_devtools import upstream_crds
from chat_devtools.control_plane import ControlPlane


def _crd_names(crds: upstream_crds.UpstreamCrds) -> list[str]:
    return [yaml.safe_load(path.read_text())["metadata"]["name"] for path in crds.paths()]


def serve(plane: ControlPlane, crds: upstream_crds.UpstreamCrds, on: bool) -> None:
    """Install (server-side apply: KEDA's and prometheus-operator's CRDs outgrow client-side apply) or remove."""
    if on:
        for path in crds.paths():
            plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), timeout=180)
        for name in _crd_names(crds):
            plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    else:
        names = [f"crd/{name}" for name in _crd_names(crds)]
        plane.kubectl("delete", "--ignore-not-found", "--wait=true", *names, timeout=180)


UPSTREAM = {
    "keda": upstream_crds.KEDA,
    "monitoring": upstream_crds.PROMETHEUS_OPERATOR,
    "rabbitmq": upstream_crds.RABBITMQ_CLUSTER_OPERATOR,
}
