"""Fixtures of the operator tests: a database of the module's own, the shared service layer over it, and a
stand-in for the Kubernetes API server's Secret endpoints (there is no API server on these machines)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from kubernetes import client
from sqlalchemy import Engine

from chat_common.tenancy.applications import Applications, build_applications
from chat_common.wire.keys import RedisKeys
from chat_devtools.namespace import Namespace
from chat_operator.kube import KubeSecrets
from chat_operator.provisioning import Provisioner
from chat_operator.reconciler import Reconciler
from tests.conftest import engine_on, namespace_of, redis_on
from tests.operator.fake_apiserver import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "helm/chat-system/crds/applications.chat-system.io.yaml"
PEERING_CRDS_PATH = ROOT / "helm/chat-system/crds/kopf-peering.yaml"
EXAMPLES = sorted((ROOT / "operator/examples").glob("*.yaml"))
API_URL = "http://chat-system-api.chat.svc:8080"


@pytest.fixture(scope="module")
def op_namespace() -> Iterator[Namespace]:
    """A migrated database, Redis key prefix and queue prefix for one test module."""
    yield from namespace_of("op")


@pytest.fixture(scope="module")
def op_engine(op_namespace: Namespace) -> Iterator[Engine]:
    yield from engine_on(op_namespace, pool_size=4)


@pytest.fixture(scope="module")
def op_redis(op_namespace: Namespace) -> Iterator[redis.Redis]:
    yield from redis_on(op_namespace)


@pytest.fixture(scope="module")
def keys(op_namespace: Namespace) -> RedisKeys:
    return RedisKeys(op_namespace.settings.redis_key_prefix)


@pytest.fixture(scope="module")
def applications(op_namespace: Namespace, op_engine: Engine, op_redis: redis.Redis) -> Applications:
    """The service layer exactly as the operator wires it (search cleanup included)."""
    return build_applications(op_namespace.settings, op_engine, op_redis)


@pytest.fixture(scope="module")
def provisioner(applications: Applications) -> Provisioner:
    """The provisioner of a deployment that allows adoption (operator.allowAdoption: true)."""
    return Provisioner(applications, allow_adoption=True)


@pytest.fixture(scope="module")
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secrets(apiserver: FakeApiServer) -> KubeSecrets:
    """The operator's real Secret client, pointed at the stand-in API server."""
    configuration = client.Configuration(host=apiserver.url)
    return KubeSecrets(lambda: client.CoreV1Api(client.ApiClient(configuration)))


@pytest.fixture(scope="module")
def reconciler(provisioner: Provisioner, secrets: KubeSecrets) -> Reconciler:
    return Reconciler(provisioner, secrets, API_URL)


@pytest.fixture
def provisioned(reconciler: Reconciler, apiserver: FakeApiServer, applications: Applications) -> tuple[dict, object]:
    """An ``Application`` object applied once, and its tenant (over the real or, under rules/, the fake store)."""
    from tests.operator.test_reconciler import run, token_in_secret  # the test helpers import this module

    body = application(name="Managed tenant")
    run(reconciler.apply, body)
    return body, applications.find(token_in_secret(apiserver, body))


@pytest.fixture(scope="session")
def crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="session")
def crd_schema(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def application(resource_name: str | None = None, /, namespace: str = "tenants", **spec: object) -> dict:
    """An ``Application`` object as the API server would hand it to the operator (``spec`` as keywords)."""
    name = resource_name or f"app-{uuid.uuid4().hex[:8]}"
    spec.setdefault("name", f"Tenant {name}")
    return {
        "apiVersion": "chat-system.io/v1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"deletionPolicy": "Retain", **spec},
    }
