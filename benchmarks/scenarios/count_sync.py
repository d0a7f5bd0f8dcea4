"""Scenario ``count_sync`` (scenario 6): seconds to recount 10k dirty chats."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from chat_common.wire.keys import dirty_chat_mark
from counter_cron.sync import CountSync

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def count_sync(bench: Bench) -> dict:
    """Scenario 6: seconds to recount 10k dirty chats."""
    filled = bench.fill()
    client = redis.Redis.from_url(bench.settings.redis_url)
    try:
        client.delete(bench.keys.dirty_chats, bench.keys.dirty_applications)
        client.set(bench.keys.counts_epoch, "bench")  # skip the one-off full recount after a fresh start
        client.sadd(bench.keys.dirty_chats, *(dirty_chat_mark(filled["app_id"], c) for c in filled["sync_chats"]))
        bench.log(f"scenario 6: count sync of {len(filled['sync_chats'])} dirty chats")
        report_ = CountSync(bench.engine, client, bench.keys, bench.settings.counts_batch_size).run()
    finally:
        client.close()
    bench.log(f"  {report_.chats_recounted} chats recounted in {report_.seconds:.2f}s")
    return {
        "dirty_chats": len(filled["sync_chats"]),
        "chats_recounted": report_.chats_recounted,
        "seconds": round(report_.seconds, 3),
        "rows_changed": report_.rows_changed,
    }


def run(bench: Bench) -> dict:
    """The figures under ``count_sync``."""
    return {"count_sync": count_sync(bench)}
