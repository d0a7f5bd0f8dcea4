"""The tenant rules, in one place: which token may be served now, and the request rate of each tenant.

Every tenant-scoped call first resolves its token through :meth:`TenantGate.tenant` — unknown or expired token 404,
suspended 403, per-tenant request rate 429 — from the per-process tenant directory (no MySQL query per request).
Admin operations (:mod:`chat_api.use_cases.admin`) do not go through it: they work on suspended tenants too.
"""

from __future__ import annotations

import time

from chat_api.metrics_buffer import BUFFER
from chat_api.model import (
    Application,
    DatabaseUnavailable,
    NotFound,
    RateLimited,
    Suspended,
    UnknownApplication,
)
from chat_api.ports import RateLimiterPort, TenantDirectoryPort
from chat_api.use_cases.limits import Limits
from chat_common import metrics


class TenantGate:
    """Resolves a token to the application it may act for now, or refuses it."""

    def __init__(self, tenants: TenantDirectoryPort, rate_limiter: RateLimiterPort, limits: Limits) -> None:
        self.tenants = tenants
        self.rate_limiter = rate_limiter
        self.limits = limits

    async def tenant(self, token: str, fresh: bool = False) -> Application:
        """The application a token names, if that token may be served now: the tenant rules, in one place.

        Unknown token, or a rotated-away one past its grace period: 404 (:class:`NotFound`, the same answer, so
        an expired token tells nothing). Suspended: :class:`Suspended` (403). Over the tenant's requests per second
        (its own limit, else ``RATE_LIMIT_PER_SECOND``): :class:`RateLimited` (429). Resolved from the tenant
        directory (cached per process, bounded staleness); ``fresh`` asks MySQL (reads of the application itself).
        """
        application = await self.tenants.lookup(token, fresh)
        refusal = refusal_of(token, application)
        if refusal is not None:
            if refusal[0] != "unknown":
                BUFFER.inc(metrics.TENANT_REFUSALS, refusal[0])
            raise refusal[1]
        limit = application.limits.requests_per_second or self.limits.rate_limit_per_second
        if limit and not await self.rate_limiter.admit(application.id, limit):
            BUFFER.inc(metrics.TENANT_REFUSALS, "rate_limited")
            raise RateLimited(f"more than {limit} requests per second for this application", retry_after=1)
        # The caller's token is one of its tokens: its plaintext is known now (the directory holds only digests).
        return application.knowing(token)

    async def token_standing(self, token: str) -> tuple[str, str] | None:
        """For open live streams: ``(reason, error)`` when the token may no longer be served, else None.

        The rules of :meth:`tenant` (one place: :func:`refusal_of`) over the same cached directory, without the
        request rate (a stream re-checked by the hub's ticker is not a request). MySQL unreachable with nothing
        cached: None — a stream is not cut because the check could not be made; the next round checks again.
        """
        try:
            application = await self.tenants.lookup(token)
        except DatabaseUnavailable:
            return None
        refusal = refusal_of(token, application)
        return None if refusal is None else (refusal[0], str(refusal[1]))


def refusal_of(token: str, application: Application | None) -> tuple[str, NotFound | Suspended] | None:
    """Why this token may not be served now (reason, error), or None: the 404 and 403 rules of the gate."""
    if application is None:
        return "unknown", UnknownApplication()
    if not application.is_current(token) and not application.previous_token_valid(time.time()):
        return "expired_token", UnknownApplication()
    if application.suspended:
        return "suspended", Suspended("application suspended")
    return None
