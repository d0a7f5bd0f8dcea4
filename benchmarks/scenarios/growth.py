"""Scenario ``growth`` (scenario 7): scenarios 1 and 4 again with the table filled, and creates with 1, 2
and 4 gunicorn workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.knobs import HEADLINE_CONCURRENCY, MESSAGE_BODY, REPEATS, WORKER_COUNTS, WORKERS
from benchmarks.scenarios.drain import drains
from chat_devtools.load.wrk import wrk

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def growth(bench: Bench) -> dict:
    """Scenario 7: scenario 1 and 4 again with the table filled, and scenario 1 with 1, 2, 4 gunicorn workers."""
    bench.fill()
    out = {"drain": drains(bench, "table filled"), "workers": []}
    token, _, chats = bench.new_app("growth-create", 16)
    paths = bench.message_paths(token, chats)
    bench.log(f"scenario 7: create message at c={HEADLINE_CONCURRENCY} with 1, 2, 4 gunicorn workers (table filled)")
    for workers in WORKER_COUNTS:
        ceiling = bench.framework_ceiling(f"{workers}w", paths, workers=workers)
        bench.api.restart_api(GUNICORN_WORKERS=str(workers))
        wrk(bench.api.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)
        point = bench.measure(
            bench.api,
            f"create message, {workers}w",
            paths,
            HEADLINE_CONCURRENCY,
            method="POST",
            body=MESSAGE_BODY,
            repeats=REPEATS,
        )
        out["workers"].append({"workers": workers, "create_message": point, "framework_ceiling": ceiling})
        bench.wait_queues_empty()
    bench.client.session.close()
    bench.api.restart_api(GUNICORN_WORKERS=str(WORKERS))
    return out


def run(bench: Bench) -> dict:
    """The figures under ``growth``."""
    return {"growth": growth(bench)}
