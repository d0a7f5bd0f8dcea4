"""The end-to-end suite against a deployed system needs only API_BASE_URL: it imports, collects and skips what it
cannot do there without touching a local database, Redis or broker (issue #12, points 1 and 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from chat_devtools.ports import closed_port
from tests.chart.rendering import ROOT


def run_e2e(tmp_path, *args: str) -> subprocess.CompletedProcess:
    port = closed_port()
    env = {
        **os.environ,
        # Every address is a closed port: any connection attempt fails loudly.
        "API_BASE_URL": f"http://127.0.0.1:{port}",
        "DATABASE_URL": f"mysql+pymysql://chat:pw@127.0.0.1:{port}/chat_system?charset=utf8mb4",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "RABBITMQ_URL": f"amqp://chat:pw@127.0.0.1:{port}/%2F",
        # No kubectl on the PATH.
        "PATH": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_e2e_suite_collects_with_only_api_base_url(tmp_path):
    result = run_e2e(tmp_path, "--collect-only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_counts_after_sync" in result.stdout


def test_tests_that_cannot_run_behind_the_ingress_skip_without_touching_the_database(tmp_path):
    # The count test is not among them: with API_BASE_URL alone it waits for the system's own periodic count sync
    # (tests/e2e/target.py chooses by configuration, never by finding kubectl), so it talks to the API only.
    result = run_e2e(tmp_path, "-k", "chunked or readiness_and_metrics")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 skipped" in output and not re.search(r"\d+ errors?\b", output), output
    assert "OperationalError" not in output
    assert "re-frames request bodies" in output  # the 411 test says why it cannot run
