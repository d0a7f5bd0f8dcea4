"""Scenario ``naive``: the design the queue replaces, a POST that inserts its row before it answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.knobs import CONCURRENCY, MESSAGE_BODY, REPEATS
from chat_devtools.load.wrk import wrk

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def naive_sync_insert(bench: Bench) -> list[dict]:
    """The design the queue replaces: the same POST inserting its row inside the request."""
    token, _, chats = bench.new_app("naive", 16)
    paths = bench.message_paths(token, chats)
    naive = bench.stack("naive", app="benchmarks.apps:naive_app()").start_api()
    bench.log("naive baseline: POST …/messages answered after an INSERT in the request")
    try:
        wrk(naive.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)
        post = {"method": "POST", "body": MESSAGE_BODY, "repeats": REPEATS}
        return [bench.measure(naive, "naive sync insert", paths, c, **post) for c in CONCURRENCY]
    finally:
        naive.stop()


def run(bench: Bench) -> dict:
    """The figures under ``naive_sync_insert``."""
    return {"naive_sync_insert": naive_sync_insert(bench)}
