"""The dispatcher's Prometheus metrics (bounded labels: an endpoint is its numeric id, never a token or a URL)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from chat_common.metrics import LATENCY_BUCKETS

# delivered, retried (failed, tried again later), given_up (not retriable, or the schedule ran out), refused (the
# egress rule: nothing sent), gone (410: the endpoint is disabled).
DELIVERIES = Counter("chat_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"])
DELIVERY_LATENCY_SECONDS = Histogram(
    "chat_webhook_delivery_latency_seconds",
    "From an event's commit to its endpoint's 2xx answer",
    buckets=(*LATENCY_BUCKETS, 30, 60, 300, 1800, 7200, 36000, 86400),
)
BACKLOG_EVENTS = Gauge(
    "chat_webhook_backlog_events",
    "Events an endpoint has yet to receive: the log's head minus its position, plus its held deliveries",
    ["endpoint"],
)
BACKLOG_AGE_SECONDS = Gauge(
    "chat_webhook_backlog_age_seconds",
    "Age of the oldest event an endpoint has yet to receive (0: none)",
    ["endpoint"],
)
# Of the whole deployment (every replica reports the same counts: the chart's rules take their max).
ENDPOINTS = Gauge("chat_webhook_endpoints", "Webhook endpoints by state: healthy, failing, disabled", ["state"])
LEASED_ENDPOINTS = Gauge("chat_webhook_leased_endpoints", "Webhook endpoints this dispatcher process holds")
