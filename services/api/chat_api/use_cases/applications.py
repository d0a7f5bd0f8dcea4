"""The application lifecycle as tenants see it: create, read, list, rename, delete.

The lifecycle (:mod:`chat_common.tenancy.applications`, shared with the operator, synchronous) is rare admin work and
runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio

from chat_api.model import Application, Conflict, Page, UnknownApplication
from chat_api.ports import Applications, TenantDirectoryPort
from chat_api.use_cases.limits import Limits
from chat_api.use_cases.paging import read_page
from chat_api.use_cases.tenants import TenantGate
from chat_common.wire.idempotency import KeyReused, caller_key, request_fingerprint


class ApplicationUseCases:
    """Create, read, list, rename and delete applications."""

    def __init__(
        self, applications: Applications, tenants: TenantDirectoryPort, gate: TenantGate, limits: Limits
    ) -> None:
        self.applications = applications
        self.tenants = tenants
        self.gate = gate
        self.limits = limits

    async def create(
        self, name: object, idempotency_key: str | None = None, caller: str = ""
    ) -> tuple[Application, bool]:
        """Create an application with a fresh token; a repeated idempotency key returns the first one.

        The key is scoped to ``caller`` (who authenticated: the resource says) and bound to the request's
        fingerprint: another caller's key, or the operator's, names nothing here (a new application), and the same
        key with a different name is a :class:`Conflict` (409).
        """
        name = self.limits.name(name)
        if idempotency_key is None:
            created = await asyncio.to_thread(self.applications.create, name)
        else:
            stored = caller_key(caller, idempotency_key)
            request = request_fingerprint("POST", "/applications", {"name": name})
            try:
                created = await asyncio.to_thread(self.applications.create, name, stored, request)
            except KeyReused:
                raise Conflict("this Idempotency-Key was used for a different request") from None
        self.tenants.invalidate(created[0].token)  # nothing cached about it here, not even as unknown
        return created

    async def get(self, token: str) -> Application:
        """The application behind a token (read afresh: a rename shows at once).

        Through a former token (grace period) it shows that token, never the current one: see
        :meth:`~chat_common.tenancy.applications.Application.seen_with`.
        """
        return (await self.gate.tenant(token, fresh=True)).seen_with(token)

    async def list(self, page: int = 1, per_page: int | None = None) -> Page:
        """A page of applications in creation order."""
        return await read_page(
            self.limits, lambda offset, limit: asyncio.to_thread(self.applications.list, offset, limit), page, per_page
        )

    async def rename(self, token: str, name: object) -> Application:
        """Set an application's name; answered as seen with ``token`` (a former token never shows the new one)."""
        await self.gate.tenant(token)
        application = await asyncio.to_thread(self.applications.rename, token, name)
        self.tenants.invalidate(token)
        if application is None:
            raise UnknownApplication()
        return application.seen_with(token)

    async def delete(self, token: str) -> int:
        """Delete an application and everything in it; returns how many messages went with it (admin)."""
        deleted = await asyncio.to_thread(self.applications.delete, token)
        self.tenants.invalidate(token)
        if deleted is None:
            raise UnknownApplication()
        return deleted
