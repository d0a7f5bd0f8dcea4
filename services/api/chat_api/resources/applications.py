"""``/applications``, ``/applications/{token}`` and its header form ``/application``."""

from __future__ import annotations

import falcon

from chat_api.model import Invalid
from chat_api.resources.params import (
    add_page_links,
    admin_identity,
    body_field,
    body_object,
    page_params,
    require_admin,
)
from chat_api.services import ChatService


class ApplicationsResource:
    """Tenants: listing and creating are admin operations, the rest is authorised by the token itself."""

    def __init__(self, service: ChatService, admin_api_key: str | None) -> None:
        self.service = service
        self.admin_api_key = admin_api_key

    @falcon.before(require_admin)
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List applications, a page at a time."""
        page, per_page = page_params(req, self.service.limits)
        result = await self.service.list_applications(page, per_page)
        resp.media = [a.public() for a in result.items]
        add_page_links(req, resp, result.page, result.per_page, result.has_next)

    @falcon.before(require_admin)
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create an application; answers its token."""
        key = req.get_header("Idempotency-Key")
        name = await body_field(req, "application", "name")
        application, created = await self.service.create_application(
            name, key, caller=admin_identity(self.admin_api_key)
        )
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        if application.token is not None:  # a replay without TOKEN_SEALING_KEY cannot recover it (docs/security.md)
            resp.location = f"{req.prefix}/applications/{application.token}"
        resp.media = application.public()

    async def on_get_item(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Show one application."""
        resp.media = (await self.service.get_application(token)).public()

    async def on_patch_item(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Rename an application."""
        resp.media = (
            await self.service.rename_application(token, await body_field(req, "application", "name"))
        ).public()

    on_put_item = on_patch_item

    # The header form, /application (token in Authorization): the tenant's own operations only, no DELETE.
    on_get_own = on_get_item
    on_patch_own = on_patch_item
    on_put_own = on_patch_item

    @falcon.before(require_admin)
    async def on_delete_item(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Delete an application with all its chats and messages (admin only)."""
        await self.service.delete_application(token)
        resp.status = falcon.HTTP_204


class TenantAdminResource:
    """Tenant management (admin key): suspend and resume, rotate the token, limits, CORS origins, usage.

    The same :mod:`chat_common.tenancy.applications` operations the operator applies from an ``Application``'s spec.
    They work on suspended tenants, and with the former token during its grace period.
    """

    def __init__(self, service: ChatService, admin_api_key: str | None) -> None:
        self.service = service
        self.admin_api_key = admin_api_key

    @falcon.before(require_admin)
    async def on_post_suspend(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Suspend: every tenant-scoped request with its tokens answers 403; nothing is deleted."""
        resp.media = (await self.service.suspend_application(token, True)).admin()

    @falcon.before(require_admin)
    async def on_post_resume(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Resume a suspended application."""
        resp.media = (await self.service.suspend_application(token, False)).admin()

    @falcon.before(require_admin)
    async def on_post_rotate(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Rotate the token; the current one keeps working for ``grace_seconds`` (default 86400), then 404s."""
        body = await body_object(req) or {}
        if set(body) - {"grace_seconds"}:
            raise Invalid(f"unknown field {sorted(set(body) - {'grace_seconds'})[0]!r}; send only grace_seconds")
        application = await self.service.rotate_token(token, body.get("grace_seconds"))
        # The token the rotation replaced (set in the same UPDATE as the new one).
        resp.media = {**application.admin(), "previous_token": application.previous_token}

    @falcon.before(require_admin)
    async def on_get_limits(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """The tenant's limits (null: the deployment's default)."""
        resp.media = (await self.service.admin_application(token)).limits.public()

    @falcon.before(require_admin)
    async def on_put_limits(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Replace the limits (a limit not given returns to the default)."""
        resp.media = (await self.service.set_limits(token, await body_object(req))).admin()

    @falcon.before(require_admin)
    async def on_patch_limits(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Change the limits given (null: back to the default), keep the others."""
        resp.media = (await self.service.set_limits(token, await body_object(req), merge=True)).admin()

    @falcon.before(require_admin)
    async def on_get_cors(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """The origins CORS allows on the tenant's stream and ticket routes (null: the deployment's)."""
        resp.media = {"origins": (await self.service.admin_application(token)).admin()["cors_origins"]}

    @falcon.before(require_admin)
    async def on_put_cors(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Replace them: ``{"origins": [...]}``, or ``{"origins": null}`` for the deployment's."""
        resp.media = (await self.service.set_cors_origins(token, await body_object(req))).admin()

    @falcon.before(require_admin)
    async def on_get_usage(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Chats and messages (as of the last count sync), last activity and state."""
        resp.media = (await self.service.usage(token)).public()
