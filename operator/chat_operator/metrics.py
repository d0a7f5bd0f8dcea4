"""Prometheus metrics of the operator (served on ``METRICS_PORT`` by :func:`chat_common.metrics.serve_metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from chat_common.metrics import LATENCY_BUCKETS

# `handler`: apply (create/resume/update), refresh (timer) or finalize (delete).
HANDLED = Counter("chat_operator_handled_total", "Handler invocations on Application resources", ["handler"])
FAILURES = Counter(
    "chat_operator_handler_failures_total",
    "Handler invocations that failed, by reason (InvalidSpec, Unavailable, SecretConflict, error …)",
    ["handler", "reason"],
)
HANDLER_SECONDS = Histogram(
    "chat_operator_handler_duration_seconds",
    "Time spent in one handler invocation",
    ["handler"],
    buckets=LATENCY_BUCKETS,
)
# From the resource's creation to its token Secret being written, retries included.
PROVISIONING_SECONDS = Histogram(
    "chat_operator_provisioning_duration_seconds",
    "Time from an Application's creation until its tenant is ready",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

# Every series exists from the start, so rates and alerts see zeros instead of absent data.
for _handler in ("apply", "refresh", "finalize"):
    HANDLED.labels(_handler)
    HANDLER_SECONDS.labels(_handler)
