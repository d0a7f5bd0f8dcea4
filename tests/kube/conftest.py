"""A real Kubernetes control plane for the chart and operator tests (chat_devtools.control_plane).

One control plane serves the whole session (~20 s to start): etcd, kube-apiserver, controller manager, scheduler and
three kwok nodes on loopback. Tests isolate themselves by namespace (and by release name); cluster-scoped things a
test changes — which upstream CRDs are served — go through :func:`served_groups`, which puts them back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from chat_devtools.control_plane import ControlPlane
from tests.conftest import LOG_ROOT
from tests.kube.served import UPSTREAM, serve

pytestmark = pytest.mark.kube


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    workdir = LOG_ROOT / f"control-plane-{uuid.uuid4().hex[:6]}"
    plane = ControlPlane.start(workdir)
    yield plane
    plane.stop()


@pytest.fixture
def served_groups(control_plane: ControlPlane):
    """Call with keda=/monitoring=/rabbitmq= True or False to make the cluster serve those groups (or not)."""

    def set_groups(**wanted: bool) -> None:
        for name, on in wanted.items():
            serve(control_plane, UPSTREAM[name], on)

    return set_groups


@pytest.fixture
def kube_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards."""
    with control_plane.namespace(f"t-{uuid.uuid4().hex[:8]}") as name:
        yield name
