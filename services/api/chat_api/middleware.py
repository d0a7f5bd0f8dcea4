"""Middleware: request metrics, body size limit, token shape, per-token rate limit and security headers."""

from __future__ import annotations

import logging
import time

import falcon
import redis
from prometheus_client import Counter, Histogram

from chat_common.keys import RedisKeys
from chat_common.metrics import LATENCY_BUCKETS
from chat_common.tenancy import TOKEN_SHAPE

log = logging.getLogger(__name__)

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
    """413 for bodies over the limit, 411 for bodies of unknown length, before anything parses them.

    An oversized body is read and discarded (up to ``drain_bytes``) before answering: left unread, the server
    would close the connection behind a keep-alive client's back and poison that client's *next* request.
    """

    def __init__(self, max_bytes: int, drain_bytes: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        length = req.content_length
        if length is None:
            if req.method in BODY_METHODS and req.get_header("Transfer-Encoding"):
                raise falcon.HTTPLengthRequired(description="send a Content-Length with the body")
            return
        if length > self.max_bytes:
            if length <= self.drain_bytes:
                stream = req.bounded_stream
                while stream.read(64 * 1024):
                    pass
            raise falcon.HTTPContentTooLarge(description=f"request body is larger than {self.max_bytes} bytes")


class SecurityHeaders:
    """Headers that keep browsers from sniffing, framing or caching API answers.

    A resource may set its own value of one of them (the HTML docs page loosens the CSP for its styles).
    """

    def process_response(self, req, resp, resource, req_succeeded: bool) -> None:  # noqa: D102
        for name, value in SECURITY_HEADERS.items():
            if resp.get_header(name) is None:
                resp.set_header(name, value)


# What new_token() produces (and a little slack); anything else cannot name an application.


class TokenShape:
    """404 for a path token that no application can have, before it reaches Redis keys or MySQL's ASCII column."""

    def process_resource(self, req, resp, resource, params: dict) -> None:  # noqa: D102
        token = params.get("token")
        if token is not None and not TOKEN_SHAPE.fullmatch(token):
            raise falcon.HTTPNotFound(description="application not found")


class RateLimit:
    """Per-token limit: at most ``per_second`` requests in each wall-clock second, counted in Redis.

    A fixed one-second window (one INCR per request) is shared by every API process; the excess gets 429
    with ``Retry-After: 1``. When Redis cannot be reached the request goes through: the limiter protects
    the system, it must not become the reason the API is down.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, per_second: int) -> None:
        self.client = client
        self.keys = keys
        self.per_second = per_second

    def process_resource(self, req, resp, resource, params: dict) -> None:  # noqa: D102
        token = params.get("token")
        if not self.per_second or token is None:
            return
        key = self.keys.rate_window(token, int(time.time()))
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2)
            count = pipe.execute()[0]
        except redis.RedisError as exc:
            log.debug("rate limit not checked: %s", exc.__class__.__name__)
            return
        if count > self.per_second:
            raise falcon.HTTPTooManyRequests(
                description=f"more than {self.per_second} requests per second for this application", retry_after=1
            )
