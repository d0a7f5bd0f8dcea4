"""Soak: a bounded run under steady load; memory, file descriptors, threads and connections must not grow.

Every process is sampled after a warm-up (pools filled, code paths imported) and again at the end. The bounds,
per process of ours (API master and workers, both writers):

- resident memory grows by at most ``max(16 MiB, 10 %)``;
- open file descriptors and TCP connections by at most 8, threads by at most 4;

and at the servers: MariaDB's ``Threads_connected`` and Redis' ``connected_clients`` by at most 4 (no
connection leak). The servers' own memory is recorded, not bounded (their caches fill by design). Every
create accepted during the run must also be stored exactly once, with exact counts after a sync.

``SOAK_SECONDS`` sets the measured part (default 40 s; ``make soak`` runs 600 s).
"""

from __future__ import annotations

import os
import statistics
import time

import psutil
import pytest

from chat_devtools.audit import audit, counts_are_exact
from chat_devtools.load.clients import Workload
from tests.chaos.conftest import Deployment

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
WARMUP_SECONDS = 10.0
MIB = 1024 * 1024


def _processes(d: Deployment) -> dict[str, tuple[int, bool]]:
    """Name -> (pid, bounded) of every process of the run."""
    api = psutil.Process(d.system.api.pid)
    found = {"api master": (api.pid, True)}
    for i, worker in enumerate(sorted(api.children(), key=lambda p: p.pid)):
        found[f"api worker {i + 1}"] = (worker.pid, True)
    found["chat-writer"] = (d.system.chat_writer.pid, True)
    found["message-writer"] = (d.system.message_writer.pid, True)
    for service in d.infra.all:
        found[service.name] = (service.server_pid, False)
    return found


def _sample(processes: dict[str, tuple[int, bool]], d: Deployment) -> dict:
    samples = {}
    for name, (pid, _) in processes.items():
        p = psutil.Process(pid)
        with p.oneshot():
            samples[name] = {
                "rss_mib": round(p.memory_info().rss / MIB, 1),
                "fds": p.num_fds(),
                "threads": p.num_threads(),
                "tcp": len(p.net_connections(kind="tcp")),
            }
    samples["mariadb"]["server_connections"] = d.infra.mariadb.status("Threads_connected")
    samples["redis"]["server_connections"] = d.infra.redis.info("connected_clients")
    return samples


def _growth_violations(start: dict, end: dict, processes: dict[str, tuple[int, bool]]) -> list[str]:
    problems = []
    for name, (_, bounded) in processes.items():
        a, b = start[name], end[name]
        if bounded:
            rss_bound = max(16.0, a["rss_mib"] * 0.10)
            if b["rss_mib"] - a["rss_mib"] > rss_bound:
                problems.append(f"{name}: RSS {a['rss_mib']} -> {b['rss_mib']} MiB (bound +{rss_bound:.0f})")
            for key, bound in (("fds", 8), ("tcp", 8), ("threads", 4)):
                if b[key] - a[key] > bound:
                    problems.append(f"{name}: {key} {a[key]} -> {b[key]} (bound +{bound})")
        if "server_connections" in a and b["server_connections"] - a["server_connections"] > 4:
            problems.append(f"{name}: connections {a['server_connections']} -> {b['server_connections']}")
    return problems


def test_soak_no_growth(deployment, soak_results):
    d = deployment
    token = d.api.new_application("soak")
    seed = {d.api.new_chat(token, f"room {i}"): f"room {i}" for i in range(5)}
    load = Workload(d.system.base_url, token, list(seed), threads=3, pause=0.01, chat_every=50, label="soak").start()
    time.sleep(WARMUP_SECONDS)
    processes = _processes(d)
    start = _sample(processes, d)
    time.sleep(SOAK_SECONDS)
    end = _sample(processes, d)
    attempts = load.stop()
    figures = audit(d.engine, token, attempts, seed)
    d.system.sync_counts()
    counts = counts_are_exact(d.engine, token)
    problems = _growth_violations(start, end, processes)
    latencies = sorted(a.seconds for a in attempts if a.status == 201)
    soak_results.meta.update(
        seconds=SOAK_SECONDS,
        warmup_seconds=WARMUP_SECONDS,
        requests=figures.attempts,
        accepted=figures.accepted,
        persisted=figures.persisted,
        lost=figures.lost,
        duplicated=figures.duplicated + figures.numbers_answered_twice,
        rate_per_second=round(figures.attempts / (SOAK_SECONDS + WARMUP_SECONDS), 1),
        latency_ms={
            "p50": round(statistics.median(latencies) * 1000, 1),
            "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
        },
        counts_exact=not counts,
        violations=problems,
    )
    for name, (_, bounded) in processes.items():
        soak_results.add(process=name, bounded=bounded, start=start[name], end=end[name])
    assert figures.lost == 0 and figures.duplicated == 0 and figures.invented == 0, figures.examples
    assert figures.other_status == {} and figures.answered_503 == 0, figures
    assert not counts, counts
    assert not problems, problems
