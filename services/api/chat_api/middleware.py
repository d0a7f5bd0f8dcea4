"""Middleware: request metrics, body size limit and security headers."""

from __future__ import annotations

import time

import falcon
from prometheus_client import Counter, Histogram

from chat_common.metrics import LATENCY_BUCKETS

REQUESTS = Counter("chat_api_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "chat_api_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS
)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestMetrics:
    """Counts and times every request by route template (never by raw path, which would explode cardinality)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:  # noqa: D102
        route = req.uri_template or "unmatched"
        elapsed = time.perf_counter() - req.context.get("started", time.perf_counter())
        REQUESTS.labels(route, req.method, resp.status_code).inc()
        REQUEST_SECONDS.labels(route, req.method).observe(elapsed)


class BodyLimit:
    """413 for bodies over the limit, 411 for bodies of unknown length, before anything reads them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        length = req.content_length
        if length is None:
            if req.method in BODY_METHODS and req.get_header("Transfer-Encoding"):
                raise falcon.HTTPLengthRequired(description="send a Content-Length with the body")
            return
        if length > self.max_bytes:
            raise falcon.HTTPContentTooLarge(description=f"request body is larger than {self.max_bytes} bytes")


class SecurityHeaders:
    """Headers that keep browsers from sniffing, framing or caching API answers."""

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:  # noqa: D102
        resp.set_headers(SECURITY_HEADERS)
