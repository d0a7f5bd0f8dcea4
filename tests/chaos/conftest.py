"""Fixtures of the chaos and soak suites: private MariaDB, Redis and RabbitMQ, and a system running on them."""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from chat_common.clients.db import make_engine
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.private_services import PrivateServices, unavailable_reason
from chat_devtools.processes import System
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT


@pytest.fixture(scope="session")
def infra() -> Iterator[PrivateServices]:
    """MariaDB, Redis and RabbitMQ of our own, on free ports, for the whole session."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip("chaos tests start and kill their own processes; API_BASE_URL is set")
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = LOG_ROOT / f"private-{uuid.uuid4().hex[:8]}"
    services = PrivateServices(root).start()
    yield services
    services.stop()
    for service in services.all:  # keep the servers' logs, drop their data
        for data in ("data", "mnesia"):
            shutil.rmtree(service.dir / data, ignore_errors=True)


@dataclass
class Deployment:
    """One chat system on the private infrastructure: its processes, a client, SQL access and secrets."""

    infra: PrivateServices
    namespace: Namespace
    system: System
    api: Api
    engine: Engine
    admin_key: str

    @property
    def secrets(self) -> dict[str, str]:
        return {
            "admin key": self.admin_key,
            "database password": self.infra.mariadb.password,
            "Redis password": self.infra.redis.password,
            "RabbitMQ password": self.infra.rabbitmq.password,
        }


def deploy(infra: PrivateServices, **overrides: object) -> Deployment:
    """Start a fresh system (own database, keys, queues) on the private services."""
    infra.ensure_running()
    admin_key = f"adm-{secrets.token_urlsafe(20)}"
    database_url = make_url(infra.mariadb.url).set(database=f"cs_chaos_{uuid.uuid4().hex[:10]}")
    namespace = Namespace.create(
        "chaos",
        database_url=database_url.render_as_string(hide_password=False),
        redis_url=infra.redis.url,
        rabbitmq_url=infra.rabbitmq.url,
        admin_api_key=admin_key,
        **overrides,
    )
    system = System(namespace, LOG_ROOT / namespace.name).start()
    engine = make_engine(namespace.settings.database_url, pool_size=2)
    return Deployment(infra, namespace, system, Api(system.base_url, admin_key=admin_key), engine, admin_key)


def teardown(deployment: Deployment) -> None:
    """Stop the system, bring the services back if a scenario left one down, drop the namespace."""
    deployment.system.stop()
    deployment.engine.dispose()
    deployment.infra.ensure_running()
    deployment.namespace.destroy()


@pytest.fixture
def deployment(infra: PrivateServices) -> Iterator[Deployment]:
    """A fresh system on the private services, stopped afterwards."""
    d = deploy(infra)
    yield d
    teardown(d)


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[Results]:
    results = Results("chaos")
    yield results
    results.save()


@pytest.fixture(scope="session")
def guarantee_results() -> Iterator[Results]:
    results = Results("guarantees")
    yield results
    results.save()


@pytest.fixture(scope="session")
def soak_results() -> Iterator[Results]:
    results = Results("soak")
    yield results
    results.save()
