"""Prometheus metrics shared by the services, and the helpers that expose them.

Metric names are part of the contract with the Helm chart's alerts and Grafana dashboard
(tests/chart checks that every name used there is defined here or in a service).
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    push_to_gateway,
    start_http_server,
)

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Writers (the shared consumer loop records these; `queue` tells the chat and message writers apart).
WRITER_CONSUMED = Counter("chat_writer_consumed_total", "Queue messages taken from the broker", ["queue"])
WRITER_WRITTEN = Counter("chat_writer_applied_total", "Queue messages applied to the database", ["queue"])
WRITER_BATCH_SIZE = Histogram("chat_writer_batch_size", "Messages per written batch", ["queue"], buckets=BATCH_BUCKETS)
WRITER_WRITE_SECONDS = Histogram(
    "chat_writer_write_duration_seconds", "Time to apply and commit one batch", ["queue"], buckets=LATENCY_BUCKETS
)
WRITER_REDELIVERED = Counter("chat_writer_redelivered_total", "Deliveries the broker marked as redelivered", ["queue"])
WRITER_RETRIED = Counter("chat_writer_retried_total", "Messages sent to a retry tier", ["queue"])
WRITER_RETRY_OVERDUE = Gauge(
    "chat_writer_retry_overdue_seconds",
    "How late the most overdue retry-tier message this writer holds was at its last turn (0: none overdue)",
    ["queue"],  # the work queue whose tiers the writer drains
    multiprocess_mode="max",
)
WRITER_DEAD_LETTERED = Counter(
    "chat_writer_dead_lettered_total", "Messages sent to the dead-letter queue", ["queue", "reason"]
)
WRITER_BATCH_FAILURES = Counter(
    "chat_writer_batch_failures_total", "Batch attempts that failed and were retried", ["queue"]
)

QUEUE_DEPTH = Gauge(
    "chat_queue_messages",
    "Ready messages in a queue, sampled by the writer consuming it",
    ["queue", "kind"],  # kind: work, retry or dead
    multiprocess_mode="max",
)
QUEUE_CONSUMERS = Gauge(
    "chat_queue_consumers",
    "Consumers of a queue as the broker counts them, sampled by a writer of its work queue",
    ["queue", "kind"],  # kind: work, retry or dead
    multiprocess_mode="max",
)

# API hand-off to the broker.
API_PUBLISHED = Counter("chat_api_published_total", "Messages the broker confirmed", ["queue"])
API_PUBLISH_BUNDLE_SIZE = Histogram(
    "chat_api_publish_bundle_size",
    "Creates and edits per AMQP message the API sent (coalesced publishing: chat_common.wire.bundles)",
    ["queue"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
API_PUBLISH_FAILURES = Counter(
    "chat_api_publish_failures_total", "Publishes answered with 503 (nack, unroutable, timeout, broker down)", ["queue"]
)

# Read replica (DATABASE_READ_URL): where the API's lag-tolerant reads ran, and the replica as last probed.
API_DB_READS = Counter(
    "chat_api_db_reads_total", "Page and search reads by the database that answered them", ["target"]
)  # target: primary, replica
API_DB_REPLICA_LAG = Gauge(
    "chat_api_db_replica_lag_seconds",
    "Replication lag of a read replica as last probed (-1: set aside: lagging, not replicating or unreachable)",
    ["replica"],  # host:port of each DATABASE_READ_URL
    multiprocess_mode="max",
)

# Search indexing (message-writer) and search queries (API).
SEARCH_BACKLOG = Gauge("chat_search_backlog", "Messages whose search document is waiting to be written")
SEARCH_BULK_FAILURES = Counter("chat_search_bulk_failures_total", "Search documents a bulk request failed to write")
SEARCH_SECONDS = Histogram(
    "chat_search_duration_seconds", "Time to answer one search", ["backend"], buckets=LATENCY_BUCKETS
)

# Tenant management (bounded labels only: never one series per tenant).
TENANT_REFUSALS = Counter(
    "chat_api_tenant_refusals_total",
    "Tenant-scoped requests refused by a tenant rule, by reason "
    "(suspended 403, expired_token 404, rate_limited 429, search_budget 429, max_chats/max_message_bytes 422)",
    ["reason"],
)
TENANT_ROTATIONS = Counter("chat_tenant_token_rotations_total", "Application tokens rotated", ["via"])  # api, operator
TENANT_SUSPENSIONS = Counter(
    "chat_tenant_suspension_changes_total", "Applications suspended or resumed", ["action", "via"]
)
TENANTS_SUSPENDED = Gauge(
    "chat_tenants_suspended", "Suspended applications among those the operator manages", multiprocess_mode="max"
)


# Live message streams (SSE): the writers' announcements of committed rows, and the API's streams.
WRITER_ANNOUNCED = Counter(
    "chat_writer_announcements_total", "Announcements of committed rows published (one per chat and batch)"
)
WRITER_ANNOUNCE_FAILURES = Counter(
    "chat_writer_announce_failures_total", "Announcement publishes that failed (kept for the next batch)"
)
WRITER_ANNOUNCEMENTS_DROPPED = Counter(
    "chat_writer_announcements_dropped_total", "Announcements dropped unsent (streams re-read MySQL instead)"
)
STREAMS_OPEN = Gauge("chat_api_streams_open", "Open message streams (SSE)", multiprocess_mode="livesum")
STREAM_EVENTS = Counter("chat_api_stream_events_total", "Events written to message streams", ["event"])
STREAM_CLOSED = Counter("chat_api_stream_closed_total", "Message streams ended, by reason", ["reason"])
STREAM_REFUSED = Counter("chat_api_stream_refused_total", "Message streams refused with 429, by limit", ["limit"])
STREAM_TICKETS = Counter(
    "chat_api_stream_tickets_total",
    "Stream tickets issued, and tickets refused (minting or opening), by outcome: issued, refused_<reason>",
    ["outcome"],
)
STREAM_READS = Counter(
    "chat_api_stream_reads_total", "MySQL reads made for streams, by cause (replay, gap, resync)", ["cause"]
)
STREAM_LAG_SECONDS = Histogram(
    "chat_api_stream_lag_seconds",
    "From a row's commit (writer clock) to its announcement's fan-out to the streams of one API worker",
    buckets=LATENCY_BUCKETS,
)


def serve_metrics(port: int) -> None:
    """Expose this process's metrics on ``port`` (writers, operator); 0 means do not serve."""
    if port:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)


def push_metrics(registry: CollectorRegistry, gateway: str | None, job: str) -> None:
    """Push a one-shot job's registry to a Pushgateway when one is configured; never fail the job for it."""
    if not gateway:
        return
    try:
        push_to_gateway(gateway, job=job, registry=registry, timeout=5)
    except OSError as exc:  # the job's work is done; losing its metrics must not fail it
        log.warning("could not push metrics to %s: %s", gateway, exc)


def multiprocess_dir() -> str | None:
    """Directory of gunicorn's multi-process metric files, when running under gunicorn."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
