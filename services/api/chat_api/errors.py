"""Error handling: every error leaves the API as ``{"error": "..."}`` with the right status, never a trace."""

from __future__ import annotations

import logging

import falcon
import falcon.asgi
import orjson
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from chat_api.model import (
    Conflict,
    CursorExpired,
    Invalid,
    NotFound,
    RateLimited,
    Suspended,
    Unavailable,
    UnknownApplication,
)

log = logging.getLogger(__name__)


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon error serializer: JSON for every HTTP error, whatever the client accepts."""
    message = exc.description or exc.title or "error"
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps({"error": message})


async def _not_found(req, resp, exc, params) -> None:
    raise falcon.HTTPNotFound(description=str(exc))


async def _unknown_application(req, resp, exc, params) -> None:
    if req.context.get("token_in_header"):  # a bad credential (RFC 6750): the header form's 401
        raise falcon.HTTPUnauthorized(
            description=str(exc), challenges=['Bearer realm="chat-system", error="invalid_token"']
        )
    raise falcon.HTTPNotFound(description=str(exc))


async def _invalid(req, resp, exc, params) -> None:
    raise falcon.HTTPUnprocessableEntity(description=str(exc))


async def _conflict(req, resp, exc, params) -> None:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    raise falcon.HTTPConflict(description=str(exc), headers=headers)


async def _cursor_expired(req, resp, exc, params) -> None:
    raise falcon.HTTPGone(description=str(exc))


async def _suspended(req, resp, exc, params) -> None:
    raise falcon.HTTPForbidden(description=str(exc))


async def _rate_limited(req, resp, exc, params) -> None:
    raise falcon.HTTPTooManyRequests(description=str(exc), retry_after=exc.retry_after)


def retry_hint(what: str, seconds: int) -> str:
    """A 503's body: what is unavailable (a kind, never a host, index or driver message) and when to retry."""
    return f"{what}; try again in {seconds} s"


def _route(req: falcon.Request) -> str:
    # The route template, never the path: a tenant path carries the token.
    return req.uri_template or "unmatched"


async def _unavailable(req, resp, exc, params) -> None:
    raise falcon.HTTPServiceUnavailable(description=retry_hint(str(exc), exc.retry_after), retry_after=exc.retry_after)


async def _database_unavailable(req, resp, exc, params) -> None:
    log.warning("database error on %s %s: %s", req.method, _route(req), exc.__class__.__name__)
    raise falcon.HTTPServiceUnavailable(description=retry_hint("database unavailable", 1), retry_after=1)


async def _unexpected(req, resp, exc, params) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, _route(req))
    raise falcon.HTTPInternalServerError(description="internal error")


def register(app: falcon.asgi.App) -> None:
    """Wire the domain exceptions to HTTP statuses (most specific last: Falcon picks the nearest match)."""
    app.add_error_handler(Exception, _unexpected)
    # Only "cannot reach or use the database" is an outage; data or integrity errors are bugs and stay 500s.
    app.add_error_handler((OperationalError, InterfaceError, PoolTimeout), _database_unavailable)
    app.add_error_handler(NotFound, _not_found)
    app.add_error_handler(UnknownApplication, _unknown_application)
    app.add_error_handler(Invalid, _invalid)
    app.add_error_handler(Conflict, _conflict)
    app.add_error_handler(Unavailable, _unavailable)
    app.add_error_handler(Suspended, _suspended)
    app.add_error_handler(CursorExpired, _cursor_expired)
    app.add_error_handler(RateLimited, _rate_limited)
    app.set_error_serializer(serialize_error)
