"""Middleware: request metrics, request and body size limits, the header form of the token, token shape, security
headers, CORS for the routes that opt in.

Per-tenant rules (suspension, expired tokens, request rate) are not middleware: they live once, in
:meth:`chat_api.services.ChatService.tenant`.
"""

from __future__ import annotations

import logging
import time

import falcon
import falcon.asgi
from prometheus_client import Counter, Histogram

from chat_api.metrics_buffer import BUFFER
from chat_api.use_cases.cors import cors_headers
from chat_common.metrics import LATENCY_BUCKETS
from chat_common.tenancy.applications import TOKEN_SHAPE

log = logging.getLogger(__name__)

REQUESTS = Counter("chat_api_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "chat_api_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS
)

SECURITY_HEADERS = {  # lower-case: Falcon's own header store keys
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestMetrics:
    """Counts and times every request by route template (never by raw path, which would explode cardinality)."""

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        req.context.started = time.perf_counter()

    async def process_response(self, req, resp, resource, req_succeeded: bool) -> None:  # noqa: D102
        route = req.uri_template or "unmatched"
        elapsed = time.perf_counter() - req.context.get("started", time.perf_counter())
        BUFFER.inc(REQUESTS, route, req.method, str(resp.status_code))
        BUFFER.observe(REQUEST_SECONDS, elapsed, route, req.method)


class SizeLimits:
    """Requests outside the size limits are refused before anything parses them.

    - 414 for a request line over 4,094 bytes, 431 for more than 100 header fields or one over 8,190 bytes: the
      limits gunicorn's own HTTP parser used to enforce (its defaults), kept now that uvicorn's httptools parser
      hands every request to the app. (The ingress enforces its own, lower limits before anything reaches a pod.)
    - 413 for bodies over ``max_bytes``, 411 for bodies of unknown length. An oversized body is read and
      discarded (up to ``drain_bytes``) before answering: left unread, the server would close the connection
      behind a keep-alive client's back and poison that client's *next* request.
    """

    MAX_LINE = 4094
    MAX_FIELDS = 100
    MAX_FIELD = 8190

    def __init__(self, max_bytes: int, drain_bytes: int = 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        scope = req.scope
        if len(scope["raw_path"]) + len(scope["query_string"]) + len(scope["method"]) + 11 > self.MAX_LINE:
            raise falcon.HTTPUriTooLong(description=f"the request line is longer than {self.MAX_LINE} bytes")
        headers = scope["headers"]
        if not isinstance(headers, list):  # ASGI promises an iterable; keep a list for Falcon to read again
            headers = scope["headers"] = list(headers)
        if len(headers) > self.MAX_FIELDS or any(len(n) + len(v) + 2 > self.MAX_FIELD for n, v in headers):
            raise falcon.HTTPRequestHeaderFieldsTooLarge(
                description=f"at most {self.MAX_FIELDS} header fields of at most {self.MAX_FIELD} bytes each"
            )
        length = req.content_length
        if length is None:
            if req.method in BODY_METHODS and req.get_header("Transfer-Encoding"):
                raise falcon.HTTPLengthRequired(description="send a Content-Length with the body")
            return
        if length > self.max_bytes:
            if length <= self.drain_bytes:
                await req.stream.exhaust()
            raise falcon.HTTPContentTooLarge(description=f"request body is larger than {self.max_bytes} bytes")


class SecureResponse(falcon.asgi.Response):
    """A response that starts with the headers that keep browsers from sniffing, framing or caching API answers.

    Set at creation rather than by a middleware step after every request; a resource may still set its own value
    of one of them (the HTML docs page loosens the CSP for its styles).
    """

    def __init__(self, options: falcon.ResponseOptions | None = None) -> None:
        super().__init__(options)
        self._headers.update(SECURITY_HEADERS)


# What new_token() produces (and a little slack); anything else cannot name an application.


class TokenShape:
    """404 for a path token that no application can have, before it reaches Redis keys or MySQL's ASCII column."""

    async def process_resource(self, req, resp, resource, params: dict) -> None:  # noqa: D102
        token = params.get("token")
        if token is not None and not TOKEN_SHAPE.fullmatch(token):
            raise falcon.HTTPNotFound(description="application not found")


HEADER_FORM = "/application"  # the tenant routes whose token is in Authorization, not in the path


def _is_header_form(template: str | None) -> bool:
    return template is not None and (template == HEADER_FORM or template.startswith(HEADER_FORM + "/"))


class HeaderToken:
    """The header form of the tenant routes: ``/application/...`` takes the token from ``Authorization: Bearer``.

    The token becomes the ``token`` parameter the path form (``/applications/{token}/...``) has, so resources and
    every rule behind them are one code path. A missing or malformed header, a value no token can have, or a token
    that names no application (or no longer does) is 401 with an RFC 6750 challenge; the path form answers 404 there.
    """

    CHALLENGE = 'Bearer realm="chat-system"'

    async def process_resource(self, req, resp, resource, params: dict) -> None:  # noqa: D102
        if not _is_header_form(req.uri_template):
            return
        if req.method == "OPTIONS":  # a CORS preflight carries no credentials: the resource answers it
            return
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise falcon.HTTPUnauthorized(
                description="send the application token as Authorization: Bearer <token>",
                challenges=[self.CHALLENGE],
            )
        if not TOKEN_SHAPE.fullmatch(token):
            raise falcon.HTTPUnauthorized(
                description="the Authorization header does not hold an application token",
                challenges=[f'{self.CHALLENGE}, error="invalid_token"'],
            )
        params["token"] = token
        req.context.token_in_header = True  # an unknown token is then a bad credential: 401 (chat_api.errors)


class Cors:
    """CORS for the routes that opt in — a resource with a ``cors_origins`` attribute (the stream and ticket
    routes); every other route sends no CORS header. The rule: :mod:`chat_api.use_cases.cors`.

    A resource that knows the tenant may narrow or widen the list for this request (``req.context.cors_origins``:
    the ticket stream, with the tenant's own list). A preflight (``OPTIONS`` with ``Access-Control-Request-Method``)
    is answered by Falcon's default responder; this adds the allowed origin, methods and headers to it.
    """

    async def process_response(self, req, resp, resource, req_succeeded: bool) -> None:  # noqa: D102
        origins = getattr(resource, "cors_origins", None)
        if origins is None:
            return
        origins = req.context.get("cors_origins", origins)
        preflight = req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method") is not None
        resp.set_headers(cors_headers(req.get_header("Origin"), origins, preflight=preflight))
