"""A tenant's webhook endpoints through the admin API: list, register, change, delete, rotate a secret, replay.

The rules are the tenancy layer's (:mod:`chat_common.tenancy.webhooks`, shared with the operator); this use case finds
the application by any of its tokens (as the other admin operations do, suspended or not), parses what the resource
hands it, runs the store in a worker thread and turns the store's errors into the API's: an unknown endpoint is
:class:`NotFound` (404), a taken name, the limit or an endpoint the operator manages :class:`Conflict` (409), a
pruned replay cursor :class:`CursorExpired` (410), no sealing key :class:`Unavailable` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from chat_api.model import (
    Application,
    Conflict,
    CursorExpired,
    EndpointChanges,
    EndpointSpec,
    Invalid,
    NotFound,
    Unavailable,
    UnknownApplication,
    WebhookEndpoint,
)
from chat_api.ports import Applications, WebhookEndpointsPort
from chat_common.tenancy import webhooks as rules
from chat_common.tenancy.applications import DEFAULT_GRACE_SECONDS, check_grace_seconds
from chat_common.webhooks.egress import EgressPolicy

T = TypeVar("T")
# How long a client should wait before trying again without a sealing key: a deployment change, not a blip.
NO_SEALING_RETRY_SECONDS = 300
ROTATION_FIELDS = ("secret", "grace_seconds")


@contextmanager
def _answers() -> Iterator[None]:
    """The store's errors as the API's."""
    try:
        yield
    except rules.EndpointNotFound as exc:
        raise NotFound(str(exc)) from None
    except rules.EndpointConflict as exc:
        raise Conflict(str(exc)) from None
    except rules.SealingUnavailable as exc:
        raise Unavailable(str(exc), retry_after=NO_SEALING_RETRY_SECONDS) from None
    except rules.CursorExpired as exc:
        raise CursorExpired(str(exc)) from None
    except LookupError:  # the application was deleted meanwhile
        raise UnknownApplication() from None


class WebhookAdmin:
    """The admin API's operations on a tenant's webhook endpoints."""

    def __init__(self, applications: Applications, endpoints: WebhookEndpointsPort, policy: EgressPolicy) -> None:
        self.applications = applications
        self.endpoints = endpoints
        self.policy = policy

    async def _application(self, token: str) -> Application:
        application = await asyncio.to_thread(self.applications.find, token)
        if application is None:
            raise UnknownApplication()
        return application

    async def _run(self, call: Callable[..., T], *args: object) -> T:
        with _answers():
            return await asyncio.to_thread(call, *args)

    async def list(self, token: str) -> list[WebhookEndpoint]:
        """The application's endpoints, in creation order."""
        application = await self._application(token)
        return await self._run(self.endpoints.list, application.id)

    async def get(self, token: str, name: str) -> WebhookEndpoint:
        """One endpoint."""
        application = await self._application(token)
        endpoint = await self._run(self.endpoints.get, application.id, name)
        if endpoint is None:
            raise NotFound(str(rules.EndpointNotFound(name)))
        return endpoint

    async def create(self, token: str, body: object) -> WebhookEndpoint:
        """Register an endpoint from a body of :data:`~chat_common.tenancy.webhooks.ENDPOINT_FIELDS` (a name is
        drawn when none is given); the answer carries its secret, the only time it is shown."""
        application = await self._application(token)
        spec = EndpointSpec.parse(body, self.policy, generate_name=True)
        return await self._run(self.endpoints.create, application.id, spec)

    async def update(self, token: str, name: str, body: object) -> WebhookEndpoint:
        """Change URL, event types or ``enabled``; enabling a disabled endpoint makes it healthy again."""
        application = await self._application(token)
        changes = EndpointChanges.parse(body, self.policy)
        return await self._run(self.endpoints.update, application.id, name, changes)

    async def delete(self, token: str, name: str) -> None:
        """Delete an endpoint."""
        application = await self._application(token)
        await self._run(self.endpoints.delete, application.id, name)

    async def rotate_secret(self, token: str, name: str, body: object) -> WebhookEndpoint:
        """A new signing secret (``secret`` given, or generated); the current one keeps signing ``grace_seconds``
        (default 24 h; 0: not at all). The answer carries the new secret."""
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise Invalid("send an object with secret and/or grace_seconds, or no body")
        unknown = sorted(set(body) - set(ROTATION_FIELDS))
        if unknown:
            raise Invalid(f"unknown field {unknown[0]!r}; send only {' and '.join(ROTATION_FIELDS)}")
        secret = body.get("secret")
        given = body.get("grace_seconds")
        grace = check_grace_seconds(DEFAULT_GRACE_SECONDS if given is None else given)
        secret = None if secret is None else rules.check_secret(secret)
        application = await self._application(token)
        return await self._run(self.endpoints.rotate_secret, application.id, name, secret, grace)

    async def replay(self, token: str, name: str, from_cursor: object) -> WebhookEndpoint:
        """Deliver the application's events again from after cursor ``from_cursor``."""
        if from_cursor is None:
            raise Invalid("from is required: a cursor of the event log (an event's id, or a page's next)")
        cursor = rules.check_cursor(from_cursor)
        application = await self._application(token)
        return await self._run(self.endpoints.replay, application.id, name, cursor)
