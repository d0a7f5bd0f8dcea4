"""Scenario ``create``: creates of messages (scenario 1, beside the bare-Falcon ceiling at each concurrency)
and of chats (scenario 2), and message creates while the writers are stopped (the queue absorbs the burst)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.knobs import CHAT_BODY, CONCURRENCY, HEADLINE_CONCURRENCY, MESSAGE_BODY, REPEATS
from chat_devtools.load.wrk import wrk

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def run(bench: Bench) -> dict:
    """Scenarios 1 and 2 beside the framework ceiling, and creates while the writers are stopped."""
    token, _, chats = bench.new_app("create", 16)
    message_paths = bench.message_paths(token, chats)
    chat_paths = [f"/applications/{token}/chats"]
    bare = bench.stack("bare", app="benchmarks.apps:bare_app()").start_api()
    out: dict = {"create_message": [], "framework_ceiling": [], "create_chat": []}
    try:
        bench.log("warm-up (not recorded)")
        for stack in (bare, bench.api):
            wrk(stack.base_url, message_paths, connections=16, seconds=3, method="POST", body=MESSAGE_BODY)
        bench.log("scenario 1: POST …/messages, each point beside the bare-Falcon ceiling")
        for c in CONCURRENCY:
            post = {"method": "POST", "body": MESSAGE_BODY, "repeats": REPEATS}
            out["framework_ceiling"].append(bench.measure(bare, "framework ceiling", message_paths, c, **post))
            out["create_message"].append(bench.measure(bench.api, "create message", message_paths, c, **post))
    finally:
        bare.stop()
    bench.wait_queues_empty()
    bench.log("scenario 2: POST …/chats")
    for c in CONCURRENCY:
        point = bench.measure(bench.api, "create chat", chat_paths, c, method="POST", body=CHAT_BODY)
        out["create_chat"].append(point)
    bench.wait_queues_empty()
    bench.log("scenario 1 with the writers stopped (the queue absorbs the burst)")
    bench.api.stop_writers()
    out["create_message_writers_stopped"] = bench.measure(
        bench.api,
        "create message, no writers",
        message_paths,
        HEADLINE_CONCURRENCY,
        method="POST",
        body=MESSAGE_BODY,
    )
    bench.api.start_writers()
    bench.wait_queues_empty()
    return out
