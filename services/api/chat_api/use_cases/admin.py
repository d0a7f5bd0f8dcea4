"""Tenant management (admin): state, suspension, token rotation, limits, CORS origins, usage — on suspended tenants
too."""

from __future__ import annotations

import asyncio

from chat_api.model import Application, Invalid, TenantLimits, UnknownApplication, Usage
from chat_api.ports import Applications, TenantDirectoryPort
from chat_common import metrics
from chat_common.tenancy.applications import DEFAULT_GRACE_SECONDS, check_grace_seconds
from chat_common.validation import clean_origins


class TenantAdmin:
    """The operations of the admin API on one tenant, found by any of its tokens."""

    def __init__(self, applications: Applications, tenants: TenantDirectoryPort) -> None:
        self.applications = applications
        self.tenants = tenants

    async def _find(self, token: str) -> Application:
        application = await asyncio.to_thread(self.applications.find, token)
        if application is None:
            raise UnknownApplication()
        return application

    def _changed(self, token: str, application: Application | None) -> Application:
        # This process sees the change at once; the others within the directory's staleness bound.
        self.tenants.invalidate(token)
        if application is not None and application.token is not None:
            self.tenants.invalidate(application.token)
        if application is None:
            raise UnknownApplication()
        return application.knowing(token)  # the caller's token, at least, is known (current or former)

    async def application(self, token: str) -> Application:
        """An application with its state, limits and token rotation, whatever its state (admin)."""
        return await self._find(token)

    async def suspend(self, token: str, suspended: bool) -> Application:
        """Suspend (its tokens answer 403; nothing is deleted) or resume an application (admin)."""
        found = await self._find(token)
        application = await asyncio.to_thread(self.applications.set_suspended, found.id, suspended)
        if application is not None and found.suspended != suspended:
            metrics.TENANT_SUSPENSIONS.labels("suspend" if suspended else "resume", "api").inc()
        return self._changed(token, application)

    async def rotate_token(self, token: str, grace_seconds: object = None) -> Application:
        """Give the application a new token; the current one keeps working ``grace_seconds`` (default 24 h) (admin).

        Chats, messages, counters, numbering and search documents stay with the application.
        """
        grace = check_grace_seconds(DEFAULT_GRACE_SECONDS if grace_seconds is None else grace_seconds)
        found = await self._find(token)
        application, _ = await asyncio.to_thread(self.applications.rotate_token, found.id, grace)
        if application is not None:
            metrics.TENANT_ROTATIONS.labels("api").inc()
        return self._changed(token, application)

    async def set_limits(self, token: str, limits: object, merge: bool = False) -> Application:
        """Set the tenant's limits (``merge``: only the ones given; else the ones not given return to the default)."""
        found = await self._find(token)
        if limits is None:
            raise Invalid("send the limits in the body")
        if merge and isinstance(limits, dict):
            limits = {**found.limits.public(), **limits}
        parsed = TenantLimits.parse(limits)
        return self._changed(token, await asyncio.to_thread(self.applications.set_limits, found.id, parsed))

    async def set_cors_origins(self, token: str, body: object) -> Application:
        """Set the origins CORS allows on the tenant's stream and ticket routes: ``{"origins": [...]}`` (a list or a
        comma-separated string), or ``{"origins": null}`` for the deployment's ``CORS_ALLOWED_ORIGINS`` (admin)."""
        found = await self._find(token)
        if not isinstance(body, dict) or set(body) != {"origins"}:
            raise Invalid('send {"origins": [origins]} or {"origins": null} for the deployment\'s default')
        raw = body["origins"]
        origins = None if raw is None else clean_origins(raw)
        return self._changed(token, await asyncio.to_thread(self.applications.set_cors_origins, found.id, origins))

    async def usage(self, token: str) -> Usage:
        """Chats and messages (as of the last count sync), last activity and state (admin)."""
        found = await self._find(token)
        usage = await asyncio.to_thread(self.applications.usage, found.id)
        if usage is None:
            raise UnknownApplication()
        return usage
