"""Concurrent clients from several processes, recording exactly what the API accepted."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor

import requests


def _create(args: tuple[str, str, dict, int, float]) -> list[tuple[int, int, dict | None]]:
    """One worker process: ``count`` POSTs from a thread pool; returns (index, status, json) per request."""
    url, field, payload, count, deadline_s = args
    session_per_thread: dict[int, requests.Session] = {}

    def one(i: int) -> tuple[int, int, dict | None]:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        body = {field: f"{payload[field]}#{i}"}
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                resp = session.post(url, json=body, timeout=10)
            except requests.RequestException:
                resp = None
            if resp is not None and resp.status_code == 201:
                return i, 201, {**resp.json(), field: body[field]}
            if (resp is not None and resp.status_code not in (503,)) or time.monotonic() > deadline:
                return i, resp.status_code if resp is not None else 0, None
            time.sleep(0.05)  # 503 or connection error: the documented answer is "retry later"

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(count)))


def create_concurrently(
    url: str, field: str, total: int, processes: int = 4, prefix: str = "item", retry_seconds: float = 30
) -> list[dict]:
    """POST ``total`` creates to ``url`` from ``processes`` processes x 16 threads; returns every 201 body.

    Each accepted body is returned with the text that was sent, so tests can check it was stored verbatim.
    503 answers are retried (that is the API's contract); any other failure is returned as a failure.
    """
    share = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        parts = pool.map(
            _create, [(url, field, {field: f"{prefix}-{p}"}, n, retry_seconds) for p, n in enumerate(share)]
        )
    results = [r for part in parts for r in part]
    failures = [r for r in results if r[1] != 201]
    assert not failures, f"{len(failures)} creates failed, e.g. {failures[:3]}"
    return [r[2] for r in results]
