"""``/applications/{token}/webhooks``: a tenant's webhook endpoints (admin key), as ``spec.webhooks`` of its
``Application`` resource manages them from Kubernetes (chat_common.tenancy.webhooks: one set of rules)."""

from __future__ import annotations

import falcon

from chat_api.resources.params import body_object, require_admin
from chat_api.services import ChatService


def json_shaped(req: falcon.Request, body: dict | None) -> dict | None:
    """A form body in the JSON body's terms (the rules take JSON types): an empty field is the default (left out),
    ``event_types`` comma-separated, ``enabled`` ``true``/``false``, ``grace_seconds`` digits (checked as given)."""
    if body is None or req.content_type is None or not req.content_type.startswith(falcon.MEDIA_URLENCODED):
        return body
    shaped: dict = {}
    for field, value in body.items():
        if value == "":
            continue
        if field == "event_types" and isinstance(value, str):
            value = value.split(",")
        elif field == "enabled" and value in ("true", "false"):
            value = value == "true"
        shaped[field] = value
    return shaped


class WebhooksResource:
    """List and register endpoints; show, change and delete one; rotate its secret; replay it from a cursor."""

    def __init__(self, service: ChatService, admin_api_key: str | None) -> None:
        self.service = service
        self.admin_api_key = admin_api_key

    @falcon.before(require_admin)
    async def on_get(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """The application's endpoints (never their secrets)."""
        resp.media = {"webhooks": [e.public() for e in await self.service.list_webhooks(token)]}

    @falcon.before(require_admin)
    async def on_post(self, req: falcon.Request, resp: falcon.Response, token: str) -> None:
        """Register an endpoint; the answer shows its signing secret, this once."""
        endpoint = await self.service.create_webhook(token, json_shaped(req, await body_object(req)))
        resp.status = falcon.HTTP_201
        resp.location = f"{req.prefix}{req.path}/{endpoint.name}"
        resp.media = endpoint.public()

    @falcon.before(require_admin)
    async def on_get_item(self, req: falcon.Request, resp: falcon.Response, token: str, webhook_id: str) -> None:
        """One endpoint with its delivery state."""
        resp.media = (await self.service.get_webhook(token, webhook_id)).public()

    @falcon.before(require_admin)
    async def on_patch_item(self, req: falcon.Request, resp: falcon.Response, token: str, webhook_id: str) -> None:
        """Change URL, event types or ``enabled`` (``true`` re-enables a disabled endpoint)."""
        body = json_shaped(req, await body_object(req))
        resp.media = (await self.service.update_webhook(token, webhook_id, body)).public()

    @falcon.before(require_admin)
    async def on_delete_item(self, req: falcon.Request, resp: falcon.Response, token: str, webhook_id: str) -> None:
        """Delete an endpoint; deliveries to it stop."""
        await self.service.delete_webhook(token, webhook_id)
        resp.status = falcon.HTTP_204

    @falcon.before(require_admin)
    async def on_post_rotate(self, req: falcon.Request, resp: falcon.Response, token: str, webhook_id: str) -> None:
        """A new signing secret; the current one keeps signing for ``grace_seconds`` (default 86400)."""
        body = json_shaped(req, await body_object(req))
        endpoint = await self.service.rotate_webhook_secret(token, webhook_id, body)
        resp.media = endpoint.public()

    @falcon.before(require_admin)
    async def on_post_replay(self, req: falcon.Request, resp: falcon.Response, token: str, webhook_id: str) -> None:
        """Deliver the application's events again from after cursor ``from``."""
        resp.media = (await self.service.replay_webhook(token, webhook_id, req.get_param("from"))).public()
