"""``/applications`` and ``/applications/{token}``."""

from __future__ import annotations

import falcon

from chat_api.resources.params import add_page_links, body_field, page_params, require_admin
from chat_api.services import ChatService


class ApplicationsResource:
    """Tenants: listing and creating are admin operations, the rest is authorised by the token itself."""

    def __init__(self, service: ChatService, admin_api_key: str | None) -> None:
        self.service = service
        self.admin_api_key = admin_api_key

    @falcon.before(require_admin)
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """List applications, a page at a time."""
        page, per_page = page_params(req, self.service.limits.max_page_size)
        result = await self.service.list_applications(page, per_page)
        resp.media = [a.public() for a in result.items]
        add_page_links(req, resp, result.page, result.per_page, result.has_next)

    @falcon.before(require_admin)
    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Create an application; answers its token."""
        key = req.get_header("Idempotency-Key")
        application, created = await self.service.create_application(await body_field(req, "application", "name"), key)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
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

    @falcon.before(require_admin)
    async def on_delete_item(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Delete an application with all its chats and messages (admin only)."""
        await self.service.delete_application(token)
        resp.status = falcon.HTTP_204
