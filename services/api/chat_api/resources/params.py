"""Reading request parameters the way existing clients send them: flat or Rails-nested, JSON or form."""

from __future__ import annotations

import hashlib
import hmac
import re

import falcon

from chat_api.model import Invalid
from chat_api.services import MAX_OFFSET, Limits
from chat_common.validation import MAX_NUMBER

_NONE = object()  # a form the body does not send (None is a value a client can send)


_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


class NumberConverter:
    """Path numbers (chat and message numbers) as the contract spells them: ASCII ``[1-9][0-9]*`` up to MAX_NUMBER.

    Falcon's ``int`` converter uses :func:`int`, which also reads ``+1``, ``01``, ``1_0`` and full-width or
    Arabic-Indic digits: many paths for one chat, which path rules and caches in front would tell apart. Anything
    else does not match the route: 404, as any unknown path.
    """

    def __init__(self, min: int = 1, max: int = MAX_NUMBER) -> None:  # the route template names them min and max
        self.min = min
        self.max = max

    def convert(self, value: str) -> int | None:  # noqa: D102
        if not _NUMBER.fullmatch(value):
            return None
        number = int(value)
        return number if self.min <= number <= self.max else None


async def body_object(req: falcon.Request) -> dict | None:
    """The body as an object, None without a body; 400 for anything else."""
    if not req.content_length:
        return None
    media = await req.get_media()
    if not isinstance(media, dict):
        raise falcon.HTTPBadRequest(description="request body must be an object")
    return media


async def body_field(req: falcon.Request, root: str, field: str) -> object:
    """One field of the body, sent in exactly one of its forms.

    The forms are flat ``{"field": v}`` / ``field=v``, nested ``{"root": {"field": v}}`` (JSON) and bracketed
    ``root[field]=v`` (form, or that key in JSON). A body carrying more than one of them is ambiguous — which one
    would be stored? — and is refused with :class:`Invalid` (422, the status of every invalid field), as the
    OpenAPI document's ``oneOf`` says. ``None`` (missing: 422 from the service) when the body sends none of them.
    """
    if not req.content_length:
        return None
    media = await req.get_media()
    if not isinstance(media, dict):
        raise falcon.HTTPBadRequest(description="request body must be an object")
    nested = media.get(root)
    bracketed = f"{root}[{field}]"
    forms = {
        f"nested {root}.{field}": nested[field] if isinstance(nested, dict) and field in nested else _NONE,
        bracketed: media.get(bracketed, _NONE),
        field: media.get(field, _NONE),
    }
    sent = {name: value for name, value in forms.items() if value is not _NONE}
    if len(sent) > 1:
        raise Invalid(f"{field} was sent in more than one form ({' and '.join(sent)}); send exactly one")
    return next(iter(sent.values()), None)


_QUERY_NUMBER = re.compile(r"0|[1-9][0-9]{0,9}")


def query_number(req: falcon.Request, name: str, min_value: int, max_value: int) -> int | None:
    """A number in the query string, spelled as the contract spells it: ASCII ``0`` or ``[1-9][0-9]*``; 400 else.

    Falcon's ``get_param_as_int`` uses :func:`int`, which also reads ``+1``, ``01``, `` 1``, ``1_0`` and full-width
    or Arabic-Indic digits: many URLs for one page, which caches and rules in front would tell apart (the same
    reason the path numbers are strict, :class:`NumberConverter`). ``None`` when the parameter is absent.
    """
    value = req.get_param(name)
    if value is None:
        return None
    if not _QUERY_NUMBER.fullmatch(value) or not min_value <= int(value) <= max_value:
        raise falcon.HTTPInvalidParam(
            f"It must be a whole number from {min_value} to {max_value}, in ASCII digits without sign or leading zeros",
            name,
        )
    return int(value)


def page_params(req: falcon.Request, limits: Limits, keyset: bool = False) -> tuple[int, int | None]:
    """``page`` (1-based) and ``per_page`` from the query string; 400 when malformed or out of range.

    This is the one place the pagination bounds are checked (``1..max_page_size`` rows per page, and an offset —
    the rows before the page, ``(page - 1) x per_page`` — of at most :data:`~chat_api.services.MAX_OFFSET`):
    out-of-range paging is a malformed request (400, as the README and the OpenAPI document say), and the service
    trusts what it is given here (:meth:`chat_api.services.ChatService.page_bounds` only fills in the default).

    An offset makes MySQL (or Elasticsearch) read and drop every row before the page, so its cost grows with the
    depth; :data:`MAX_OFFSET` bounds it. Lists with numbered rows (``keyset``: chats, messages) go deeper with
    ``after=<number>`` (the ``next`` link does so), where ``page`` is only the page's ordinal and is not capped.
    """
    per_page = query_number(req, "per_page", 1, limits.max_page_size)
    after = after_param(req) if keyset else None
    page = query_number(req, "page", 1, MAX_NUMBER) or 1
    rows_before = (page - 1) * (per_page or limits.default_page_size)
    if after is None and rows_before > MAX_OFFSET:
        further = (
            "; to read further, pass after=<the last number you have> (or follow the Link header's next)"
            if keyset
            else "; narrow the request instead"
        )
        raise falcon.HTTPInvalidParam(
            f"Pages may start at most {MAX_OFFSET} rows in (this one starts {rows_before} rows in){further}", "page"
        )
    return page, per_page


def after_param(req: falcon.Request) -> int | None:
    """``after``: the number the page starts after (keyset pagination); 400 when malformed."""
    return query_number(req, "after", 0, MAX_NUMBER)


def add_page_links(
    req: falcon.Request, resp: falcon.Response, page: int, per_page: int, has_next: bool, last: int | None = None
) -> None:
    """RFC 8288 ``Link`` header with first/prev/next pages.

    Where rows have numbers (``last`` is the page's last one), ``next`` starts ``after`` it: the server seeks
    straight to it, so following ``next`` costs the same on page 1000 as on page 1. ``page`` stays in the link
    as the page's ordinal (it is what ``prev`` counts back from); when ``after`` is given, it decides.
    """
    base = f"{req.prefix}{req.path}"
    extra = "".join(
        f"&{k}={v}"
        for k, v in sorted(req.params.items())
        if k not in ("page", "per_page", "after") and isinstance(v, str)
    )

    def link(number: int, after: int | None = None) -> str:
        keyset = f"after={after}&" if after is not None else ""
        return f"{base}?{keyset}page={number}&per_page={per_page}{extra}"

    resp.append_link(link(1), "first")
    if page > 1:
        resp.append_link(link(page - 1), "prev")
    if has_next:
        resp.append_link(link(page + 1, last), "next")


async def require_admin(req: falcon.Request, resp: falcon.Response, resource, params) -> None:
    """Falcon hook: when an admin key is configured, demand it as a Bearer token (compared in constant time)."""
    expected = resource.admin_api_key
    if not expected:
        return
    scheme, _, given = (req.get_header("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise falcon.HTTPUnauthorized(
            description="this operation needs the admin API key as a Bearer token",
            challenges=['Bearer realm="chat-system"'],
        )


def admin_identity(admin_api_key: str | None) -> str:
    """Who passed :func:`require_admin`: a digest of the configured key (never the key), or ``open`` without one.

    Application-create idempotency keys are scoped to it (:func:`chat_common.wire.idempotency.caller_key`), so a new
    admin key starts a new key space, and a deployment without an admin key shares one (it has no callers to tell
    apart: anyone may create and list applications there).
    """
    if not admin_api_key:
        return "open"
    return "admin:" + hashlib.sha256(admin_api_key.encode()).hexdigest()[:32]
