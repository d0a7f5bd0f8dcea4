"""The suite picks its count sync (and whether an ingress is in front) from configuration, whatever is on the PATH
(tests.e2e.target).

No system is needed: a stand-in ``kubectl`` on a PATH of the test's own records whether it was run.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.e2e.target import (
    CRONJOB,
    LOCAL,
    PERIODIC,
    CountSyncPlan,
    behind_release_ingress,
    choose_count_sync,
    counts_synced,
)

FAKE_KUBECTL = """#!/bin/sh
printf '%s\n' "$*" >> "{log}"
case "$*" in *"get cronjob"*) echo "cronjob.batch/chat-system-counter-cron" ;; esac
"""


@pytest.fixture
def kubectl_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``kubectl`` (it only logs its arguments) first on the PATH; returns its log."""
    log = tmp_path / "kubectl.log"
    binary = tmp_path / "bin" / "kubectl"
    binary.parent.mkdir()
    binary.write_text(FAKE_KUBECTL.format(log=log))
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{binary.parent}:/usr/bin:/bin")
    return log


def test_api_base_url_alone_waits_for_the_periodic_sync_even_with_kubectl_on_the_path(kubectl_on_path):
    plan = choose_count_sync({"API_BASE_URL": "http://127.0.0.1:8080"})
    assert plan == CountSyncPlan(PERIODIC)
    polls = iter([False, True])
    counts_synced(CountSyncPlan(PERIODIC, wait_seconds=5))(lambda: next(polls))
    assert not kubectl_on_path.exists()  # it never ran


def test_a_namespace_asks_for_the_cronjob_and_runs_it_with_kubectl(kubectl_on_path):
    plan = choose_count_sync({"API_BASE_URL": "http://localhost", "E2E_K8S_NAMESPACE": "chat-e2e"})
    assert plan == CountSyncPlan(CRONJOB, "chat-e2e", "chat-system")
    counts_synced(plan)(lambda: True)
    ran = kubectl_on_path.read_text().splitlines()
    assert ran[0].startswith("-n chat-e2e get cronjob -l app.kubernetes.io/instance=chat-system,")
    assert ran[1].startswith("-n chat-e2e create job --from=cronjob.batch/chat-system-counter-cron e2e-count-sync-")


def test_the_choice_is_the_same_whatever_the_path(kubectl_on_path, monkeypatch):
    configurations = [
        {},
        {"API_BASE_URL": "http://127.0.0.1:8080"},
        {"API_BASE_URL": "http://localhost", "E2E_K8S_NAMESPACE": "ns", "E2E_HELM_RELEASE": "rel"},
        {"E2E_K8S_NAMESPACE": "ns"},  # no API_BASE_URL: the suite's own system, wherever a cluster may be
    ]
    with_kubectl = [(choose_count_sync(env), behind_release_ingress(env)) for env in configurations]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert [(choose_count_sync(env), behind_release_ingress(env)) for env in configurations] == with_kubectl
    assert [(plan.kind, ingress) for plan, ingress in with_kubectl] == [
        (LOCAL, False),
        (PERIODIC, False),  # e.g. `make run`: its private routes are reachable, and that is fine
        (CRONJOB, True),
        (LOCAL, False),
    ]


def test_waiting_for_the_periodic_sync_is_bounded():
    checks = []
    counts_synced(CountSyncPlan(PERIODIC, wait_seconds=0.0))(lambda: checks.append(1) or False)
    assert checks == [1]  # looked once, then left the caller's assertions to fail
