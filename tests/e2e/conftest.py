"""Fixtures for black-box HTTP tests (they run against `API_BASE_URL` when set, else a local system).

Against a deployed system (``API_BASE_URL``) the suite needs nothing else: no local database, Redis or broker.
The tests that need the count columns up to date choose how from configuration only (:mod:`tests.e2e.target`):
with ``E2E_K8S_NAMESPACE`` set, the API is a Helm release there (``E2E_HELM_RELEASE``, default ``chat-system``) and
its count-sync CronJob is run once with kubectl (``create job --from=cronjob/…``; `make e2e` sets both); without it
(e.g. ``API_BASE_URL`` of a system started with ``make run``) they wait for the system's periodic count sync, at most
``E2E_COUNT_SYNC_WAIT_SECONDS`` (default 120). Whether a kubectl is on the PATH plays no part in that choice.
Tests that only make sense in-process skip there, with the reason.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from chat_devtools.http import Api
from tests.e2e.target import CRONJOB, LOCAL, choose_count_sync, counts_synced

BEHIND_PROXY = "API_BASE_URL is set: the ingress re-frames request bodies, so this checks the API only in-process"


@pytest.fixture(scope="session")
def api(base_url: str) -> Api:
    """Client of the API under test."""
    return Api(base_url)


@pytest.fixture
def token(api: Api) -> str:
    """A fresh application for one test."""
    return api.new_application("test-app")


@pytest.fixture(scope="session")
def sync_counts(request) -> Callable[[Callable[[], bool]], None]:
    """``sync_counts(synced)``: bring the count columns up to date (:mod:`tests.e2e.target` says how, from
    ``API_BASE_URL`` and ``E2E_K8S_NAMESPACE``), until ``synced()`` holds.

    Session-scoped so that pytest sets it up (and skips) before the function-scoped ``token``.
    """
    plan = choose_count_sync()
    if plan.kind == CRONJOB and not shutil.which("kubectl"):
        pytest.skip(f"E2E_K8S_NAMESPACE={plan.namespace} asks for the count-sync CronJob; kubectl is not on the PATH")
    run_local = request.getfixturevalue("system").sync_counts if plan.kind == LOCAL else None
    return counts_synced(plan, run_local)


@pytest.fixture(scope="session")
def in_process_only() -> None:
    """Skip a test that checks what only the API itself (no proxy in front) can show."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip(BEHIND_PROXY)
