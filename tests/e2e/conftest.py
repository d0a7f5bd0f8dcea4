"""Fixtures for black-box HTTP tests (they run against `API_BASE_URL` when set, else a local system).

Against a deployed system (``API_BASE_URL``) the suite needs nothing else: no local database, Redis or broker.
The one test that must trigger the count sync does it with kubectl (``create job --from=cronjob/…``) when kubectl
is on the PATH; ``E2E_K8S_NAMESPACE`` (default ``chat-system``) and ``E2E_HELM_RELEASE`` (default
``chat-system``) say where the release is. Tests that only make sense in-process skip there, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable

import pytest

from tests.support.http import Api

BEHIND_PROXY = "API_BASE_URL is set: the ingress re-frames request bodies, so this checks the API only in-process"


@pytest.fixture(scope="session")
def api(base_url: str) -> Api:
    """Client of the API under test."""
    return Api(base_url)


@pytest.fixture
def token(api: Api) -> str:
    """A fresh application for one test."""
    return api.new_application("test-app")


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def _cluster_count_sync(namespace: str, release: str) -> None:
    """Run the release's count-sync CronJob once now and wait for it to finish."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=counter-cron"
    names = kubectl("-n", namespace, "get", "cronjob", "-l", selector, "-o", "name").stdout.split()
    if len(names) != 1:
        raise AssertionError(f"expected one count-sync CronJob ({selector}) in {namespace}, found {names}")
    job = f"e2e-count-sync-{uuid.uuid4().hex[:8]}"
    kubectl("-n", namespace, "create", "job", f"--from={names[0]}", job)
    try:
        kubectl("-n", namespace, "wait", "--for=condition=complete", f"job/{job}", "--timeout=180s", timeout=200)
    finally:
        subprocess.run(["kubectl", "-n", namespace, "delete", "job", job, "--wait=false"], capture_output=True)


@pytest.fixture(scope="session")
def sync_counts(request) -> Callable[[], object]:
    """Run one count sync: the CronJob in the cluster behind ``API_BASE_URL``, else the local system's.

    Session-scoped so that pytest sets it up (and skips) before the function-scoped ``token``.
    """
    if os.environ.get("API_BASE_URL"):
        if not shutil.which("kubectl"):
            pytest.skip("API_BASE_URL is set and kubectl is not on the PATH: cannot trigger the count-sync CronJob")
        namespace = os.environ.get("E2E_K8S_NAMESPACE", "chat-system")
        release = os.environ.get("E2E_HELM_RELEASE", "chat-system")
        return lambda: _cluster_count_sync(namespace, release)
    return request.getfixturevalue("system").sync_counts


@pytest.fixture(scope="session")
def in_process_only() -> None:
    """Skip a test that checks what only the API itself (no proxy in front) can show."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip(BEHIND_PROXY)
