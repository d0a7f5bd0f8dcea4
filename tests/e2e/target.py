"""What the end-to-end suite runs against, from configuration only — never from what is installed on this machine.

How the count columns are brought up to date:

- ``API_BASE_URL`` unset: the suite started the system itself and runs one count sync in its namespace.
- ``API_BASE_URL`` and ``E2E_K8S_NAMESPACE`` set: the API is a Helm release in that namespace (``E2E_HELM_RELEASE``,
  default ``chat-system``); its count-sync CronJob is run once now with kubectl (``create job --from=cronjob/…``).
- ``API_BASE_URL`` alone (e.g. a system started with ``make run``): nothing here can run the sync, so the suite waits
  for the system's own periodic one (``make run`` syncs every ``COUNT_SYNC_EVERY_SECONDS``, 30 s), at most
  ``E2E_COUNT_SYNC_WAIT_SECONDS`` (default 120).

Whether the release's ingress is in front (so private routes must not be reachable): only with ``API_BASE_URL`` and
``E2E_K8S_NAMESPACE`` (:func:`behind_release_ingress`); ``API_BASE_URL`` alone may be any system (``make run``).

A ``kubectl`` on the PATH says nothing about where the API under test runs, so it is never looked for to choose.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

LOCAL, CRONJOB, PERIODIC = "local", "cronjob", "periodic"
DEFAULT_RELEASE = "chat-system"
DEFAULT_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class CountSyncPlan:
    """Which count sync the suite uses (``kind``), and where (the CronJob's namespace and release)."""

    kind: str
    namespace: str = ""
    release: str = ""
    wait_seconds: float = DEFAULT_WAIT_SECONDS


def choose_count_sync(environ: Mapping[str, str] = os.environ) -> CountSyncPlan:
    """The plan the configuration asks for (see the module docstring); reads nothing but ``environ``."""
    if not environ.get("API_BASE_URL"):
        return CountSyncPlan(LOCAL)
    namespace = environ.get("E2E_K8S_NAMESPACE", "").strip()
    if namespace:
        return CountSyncPlan(CRONJOB, namespace, environ.get("E2E_HELM_RELEASE", "").strip() or DEFAULT_RELEASE)
    return CountSyncPlan(PERIODIC, wait_seconds=float(environ.get("E2E_COUNT_SYNC_WAIT_SECONDS", DEFAULT_WAIT_SECONDS)))


def behind_release_ingress(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``API_BASE_URL`` is a Helm release's ingress (``E2E_K8S_NAMESPACE`` names the release's namespace)."""
    return choose_count_sync(environ).kind == CRONJOB


def kubectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run kubectl; a failure is an assertion error carrying its stderr."""
    result = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def run_cronjob_once(namespace: str, release: str) -> None:
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


def counts_synced(plan: CountSyncPlan, run_local: Callable[[], object] | None = None) -> Callable[..., None]:
    """``settle(synced)``: bring the counts up to date the way ``plan`` says, until ``synced()`` holds.

    With a sync the suite runs (local, CronJob), ``synced`` is checked once afterwards; waiting for the periodic
    sync polls it until it holds or ``plan.wait_seconds`` pass. Either way the caller's assertions follow.
    """

    def settle(synced: Callable[[], bool]) -> None:
        if plan.kind == LOCAL:
            assert run_local is not None, "a local count sync needs the local system"
            run_local()
        elif plan.kind == CRONJOB:
            run_cronjob_once(plan.namespace, plan.release)
        else:
            deadline = time.monotonic() + plan.wait_seconds
            while not synced() and time.monotonic() < deadline:
                time.sleep(1.0)

    return settle
