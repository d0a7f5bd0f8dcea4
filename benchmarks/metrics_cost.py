"""`python -m benchmarks.metrics_cost N`: time the Prometheus calls one create makes, N times; prints one JSON line.

The calls are exactly those of a ``POST …/messages``: ``RequestMetrics`` (chat_api/middleware.py) counts and
times the request by route template, and ``publish`` (chat_api/use_cases/publishing.py) counts the confirmed
publish. The API makes them through ``chat_api.metrics_buffer`` (summed in process, written once a second):
``us_per_create`` is that path, with one flush per 1,000 creates charged to it (at the API's rates a flush a
second covers thousands); ``us_per_create_direct`` is the same three calls straight into prometheus_client. Run
with ``PROMETHEUS_MULTIPROC_DIR`` set (before this interpreter imports prometheus_client, as gunicorn.conf.py does
for the workers) to measure the multi-process mode the API runs in: every value lives in a memory-mapped file.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from chat_api.app import NUMBER
from chat_api.metrics_buffer import MetricsBuffer
from chat_api.middleware import REQUEST_SECONDS, REQUESTS
from chat_common.metrics import API_PUBLISHED

ROUTE = f"/applications/{{token}}/chats/{{chat_number:{NUMBER}}}/messages"
QUEUE = "chat_system.messages"


def _time(call, iterations: int, rounds: int = 5) -> float:
    """CPU µs per call of ``call`` (the loop's own cost subtracted): the median of ``rounds`` rounds.

    CPU time of this process, not wall time, so the other processes of a shared machine do not count.
    """
    per_round = max(iterations // rounds, 1)
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(per_round):
            pass
        empty = time.process_time() - started
        started = time.process_time()
        for _ in range(per_round):
            call()
        results.append(max(time.process_time() - started - empty, 0.0) / per_round * 1e6)
    return statistics.median(results)


def main() -> None:
    """Warm up, time each call alone and the three together, print the result as JSON."""
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    elapsed = 0.0123

    def requests_inc() -> None:
        REQUESTS.labels(ROUTE, "POST", 201).inc()

    def seconds_observe() -> None:
        REQUEST_SECONDS.labels(ROUTE, "POST").observe(elapsed)

    def published_inc() -> None:
        API_PUBLISHED.labels(QUEUE).inc()

    def create_direct() -> None:
        REQUESTS.labels(ROUTE, "POST", 201).inc()
        REQUEST_SECONDS.labels(ROUTE, "POST").observe(elapsed)
        API_PUBLISHED.labels(QUEUE).inc()

    buffer, calls = MetricsBuffer(), [0]

    def create() -> None:
        buffer.inc(REQUESTS, ROUTE, "POST", "201")
        buffer.observe(REQUEST_SECONDS, elapsed, ROUTE, "POST")
        buffer.inc(API_PUBLISHED, QUEUE)
        calls[0] += 1
        if calls[0] % 1000 == 0:
            buffer.flush()

    for call in (requests_inc, seconds_observe, published_inc, create_direct, create):
        _time(call, min(iterations, 10_000))  # creates the label children (and their files) first
    cpu = time.process_time()
    per_call = {
        name: _time(call, iterations)
        for name, call in (
            ("requests_inc", requests_inc),
            ("request_seconds_observe", seconds_observe),
            ("published_inc", published_inc),
        )
    }
    per_create = _time(create, iterations)
    per_create_direct = _time(create_direct, iterations)
    cpu = time.process_time() - cpu
    result = {
        "multiprocess_dir": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
        "us_per_create": round(per_create, 3),
        "us_per_create_direct": round(per_create_direct, 3),
        "us_per_call": {k: round(v, 3) for k, v in per_call.items()},
        "cpu_seconds": round(cpu, 3),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
