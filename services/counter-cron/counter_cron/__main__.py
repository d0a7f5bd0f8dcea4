"""`python -m counter_cron [--every SECONDS]`: one count sync (the CronJob), or one every N seconds (`make run`).

Each run also prunes the event log past its retention window (``counter_cron.pruning``), after the counts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time

from prometheus_client import CollectorRegistry, Gauge

from chat_common import logs
from chat_common.clients.db import make_engine
from chat_common.clients.redis_client import sync_client
from chat_common.config import Settings
from chat_common.metrics import push_metrics
from chat_common.wire.keys import RedisKeys
from counter_cron.pruning import prune_events
from counter_cron.sync import CountSync

log = logging.getLogger("counter_cron")


def sync_once(settings: Settings, engine, client) -> None:
    """Run one sync and record its metrics (pushed when a Pushgateway is configured)."""
    registry = CollectorRegistry()
    rows = Gauge("chat_counts_sync_rows_updated", "Count rows changed by the last sync", registry=registry)
    duration = Gauge("chat_counts_sync_duration_seconds", "Duration of the last sync", registry=registry)
    lock_retries = Gauge(
        "chat_counts_sync_lock_retries",
        "Transactions of the last sync retried after a deadlock or a lock-wait timeout",
        registry=registry,
    )
    contended = Gauge(
        "chat_counts_sync_rows_contended",
        "Count rows a writer held during the last sync, raised one at a time",
        registry=registry,
    )
    last_success = Gauge(
        "chat_counts_sync_last_success_timestamp_seconds", "When the last sync succeeded", registry=registry
    )
    report = CountSync(engine, client, RedisKeys(settings.redis_key_prefix), settings.counts_batch_size).run()
    rows.set(report.rows_changed)
    duration.set(report.seconds)
    lock_retries.set(report.lock_retries)
    contended.set(report.rows_contended)
    last_success.set_to_current_time()
    push_metrics(registry, settings.pushgateway_url, job="chat-counter-cron")
    log.info(
        "count sync done in %.2fs: %d chats and %d applications recounted, %d rows changed"
        " (%d contended, %d lock retries)%s",
        report.seconds,
        report.chats_recounted,
        report.applications_recounted,
        report.rows_changed,
        report.rows_contended,
        report.lock_retries,
        " (full recount)" if report.full else "",
    )
    pruned = prune_events(engine, settings.event_retention_seconds, settings.event_prune_chunk)
    log.info(
        "event log pruned in %.2fs: %d events older than %d s deleted in %d chunks (oldest id left: %s)",
        pruned.seconds,
        pruned.deleted,
        settings.event_retention_seconds,
        pruned.chunks,
        pruned.kept_from,
    )


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=float, default=0, help="repeat every N seconds until interrupted")
    args = parser.parse_args()
    logs.configure()
    settings = Settings.from_env()
    engine = make_engine(settings.database_url, pool_size=1)
    client = sync_client(settings.redis_url, socket_timeout=10)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while True:
        try:
            sync_once(settings, engine, client)
        except Exception:
            if not args.every:
                raise
            log.exception("count sync failed; trying again in %.0fs", args.every)
        if not args.every:
            break
        deadline = time.monotonic() + args.every
        while not stop and time.monotonic() < deadline:
            time.sleep(0.2)
        if stop:
            break
    engine.dispose()


if __name__ == "__main__":
    main()
