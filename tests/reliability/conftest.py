"""Fixtures of the reliability suites: a system of their own (with an admin key) and the recorders of results."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from chat_common.clients.db import make_engine
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT


def _skip_if_external() -> None:
    if os.environ.get("API_BASE_URL"):
        pytest.skip("the reliability suites start and inspect their own processes; API_BASE_URL is set")


@pytest.fixture(scope="session")
def admin_key() -> str:
    """The admin key of the reliability system (random per run: it must never show up in a log)."""
    return f"adm-{secrets.token_urlsafe(24)}"


@pytest.fixture(scope="session")
def reliability_namespace(admin_key: str) -> Iterator[Namespace]:
    """Database, key prefix and queues of the reliability system."""
    _skip_if_external()
    ns = Namespace.create("rel", admin_api_key=admin_key)
    yield ns
    ns.destroy()


@pytest.fixture(scope="session")
def reliability_system(reliability_namespace: Namespace) -> Iterator[System]:
    """API and writers with an admin key configured, as real processes."""
    system = System(reliability_namespace, LOG_ROOT / reliability_namespace.name).start()
    yield system
    system.stop()


@pytest.fixture(scope="session")
def admin_api(reliability_system: System, admin_key: str) -> Api:
    """Client sending the admin key."""
    return Api(reliability_system.base_url, admin_key=admin_key)


@pytest.fixture(scope="session")
def anonymous_api(reliability_system: System) -> Api:
    """Client without any credentials."""
    return Api(reliability_system.base_url)


@pytest.fixture(scope="session")
def reliability_engine(reliability_namespace: Namespace):
    """Direct SQL access to the reliability system's database."""
    engine = make_engine(reliability_namespace.settings.database_url, pool_size=1)
    yield engine
    engine.dispose()


def _recorder(suite: str) -> Iterator[Results]:
    results = Results(suite)
    yield results
    results.save()


@pytest.fixture(scope="session")
def hostile_results() -> Iterator[Results]:
    """Rows of the hostile-input suite."""
    yield from _recorder("hostile")


@pytest.fixture(scope="session")
def security_results() -> Iterator[Results]:
    """Rows of the security suite."""
    yield from _recorder("security")


@pytest.fixture(scope="session")
def fuzz_results() -> Iterator[Results]:
    """Figures of the schemathesis run."""
    yield from _recorder("fuzz")
