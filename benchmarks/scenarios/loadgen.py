"""Scenario ``loadgen``: what wrk itself can drive on this machine, against a server that does nothing."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import requests

from benchmarks import data
from benchmarks.knobs import HEADLINE_CONCURRENCY, SECONDS
from chat_devtools.load.wrk import wrk
from chat_devtools.ports import free_port
from chat_devtools.processes import ROOT

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def ceiling(bench: Bench) -> dict:
    """wrk against a server that does nothing: what the load generator itself can drive here."""
    bench.log("load generator ceiling (wrk against a canned-response server)")
    port = free_port()
    servers = [subprocess.Popen([sys.executable, "-m", "benchmarks.canned", str(port)], cwd=ROOT) for _ in range(2)]
    try:
        url = f"http://127.0.0.1:{port}"
        data.wait_for(lambda: _answers(url), 15, 0.1, "canned server")
        result = wrk(url, ["/x"], connections=HEADLINE_CONCURRENCY, seconds=SECONDS, method="POST", body="{}")
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    us_per_request = result.client_cpu * result.seconds / result.requests * 1e6
    bench.log(
        f"  wrk drove {result.rps:.0f} req/s using {result.client_cpu:.2f} cores ({us_per_request:.1f} us/request:"
        f" one core of wrk ~ {1e6 / us_per_request:.0f} req/s)"
    )
    return {
        **result.as_dict(),
        "client_us_per_request": round(us_per_request, 2),
        "client_ceiling_rps_per_core": round(1e6 / us_per_request),
    }


def run(bench: Bench) -> dict:
    """The figures under ``loadgen``."""
    return {"loadgen": ceiling(bench)}


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False
