"""The API's service layer: every rule of the product, and the order of the steps that keep it true.

Resources call these functions and shape the answers; adapters do the I/O. Nothing here knows HTTP.
Creates never touch MySQL: they number in Redis, hand the row to RabbitMQ with a confirm, and only then
return — so a number is reported only for a write the broker has durably accepted.

Everything here runs on the worker's event loop. The application lifecycle (:mod:`chat_common.tenancy`, shared
with the operator, synchronous) is rare admin work and runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError

from chat_api.adapters import numbering as codes
from chat_api.adapters.idempotency import KeyInUse, Recorded
from chat_api.adapters.numbering import Allocation
from chat_api.adapters.publisher import PublishError
from chat_api.adapters.recovery import keys_may_be_forgotten
from chat_api.metrics_buffer import BUFFER
from chat_api.model import Application, Chat, Conflict, DatabaseUnavailable, Message, NotFound, Page, Unavailable
from chat_api.ports import (
    Applications,
    IdempotencyPort,
    NumberingPort,
    Publisher,
    RecoveryPort,
    Repository,
    SearchReader,
    StoredKeysPort,
)
from chat_common import metrics
from chat_common.contracts import ChatUpsert, MessageUpsert
from chat_common.idempotency import check_idempotency_key, fingerprint
from chat_common.search import SearchUnavailable
from chat_common.topology import Topology
from chat_common.validation import clean_body, clean_name

MAX_PAGE = 100_000
MAX_NUMBER = 4_294_967_295  # chat and message numbers are unsigned 32-bit columns


class Keyed(NamedTuple):
    """The idempotency key of a create and its request's fingerprint, carried to the writer with the row."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Limits:
    """The product's input limits."""

    max_name_chars: int = 255
    max_body_chars: int = 10_000
    default_page_size: int = 20
    max_page_size: int = 100
    max_query_chars: int = 200


class ChatService:
    """Applications, chats and messages: the operations behind every endpoint.

    Its collaborators are the ports of :mod:`chat_api.ports`: the real adapters in production, in-memory fakes in
    ``tests/unit``.
    """

    def __init__(
        self,
        *,
        applications: Applications,
        repository: Repository,
        numbering: NumberingPort,
        recovery: RecoveryPort,
        publisher: Publisher,
        topology: Topology,
        limits: Limits,
        search: SearchReader,
        idempotency: IdempotencyPort,
        stored_keys: StoredKeysPort,
    ) -> None:
        self.applications = applications
        self.repository = repository
        self.numbering = numbering
        self.recovery = recovery
        self.publisher = publisher
        self.topology = topology
        self.limits = limits
        self.search = search
        self.idempotency = idempotency
        self.stored_keys = stored_keys

    # -- helpers ---------------------------------------------------------------------------------------------
    def _name(self, value: object) -> str:
        return clean_name(value, self.limits.max_name_chars)

    def _body(self, value: object) -> str:
        return clean_body(value, self.limits.max_body_chars)

    def page_bounds(self, page: int, per_page: int | None) -> tuple[int, int]:
        """``(page, per_page)`` with the default page size filled in.

        The bounds (``1 <= page <= MAX_PAGE``, ``1 <= per_page <= limits.max_page_size``) are checked once, where
        the query string is parsed (:func:`chat_api.resources.params.page_params`, 400), as the search query's
        shape is: callers of the service pass numbers already within them.
        """
        return page, self.limits.default_page_size if per_page is None else per_page

    async def _page(
        self, fetch: Callable[[int, int], Awaitable[list]], page: int, per_page: int | None, after: int | None = None
    ) -> Page:
        """One page: after ``after`` (keyset, cost independent of depth) when given, else by page number."""
        page, per_page = self.page_bounds(page, per_page)
        offset = 0 if after is not None else (page - 1) * per_page
        rows = await fetch(offset, per_page + 1)
        return Page(rows[:per_page], page, per_page, has_next=len(rows) > per_page)

    async def _application(self, token: str) -> Application:
        application = await asyncio.to_thread(self.applications.find, token)
        if application is None:
            raise NotFound("application not found")
        return application

    async def _allocate(
        self, call: Callable[[], Awaitable[Allocation]], token: str, chat_number: int = 0
    ) -> Allocation:
        """Run a numbering script, loading counters from MySQL or waiting out a recovery as needed."""
        try:
            for _ in range(5):
                allocation = await call()
                if allocation.status == codes.OK:
                    return allocation
                if allocation.status == codes.NOT_FOUND:
                    raise NotFound("chat not found" if chat_number else "application not found")
                if allocation.status == codes.RECOVERING:
                    if not await self.recovery.attempt():
                        raise Unavailable("numbering is recovering after a cache restart", retry_after=1)
                elif allocation.status == codes.APPLICATION_NOT_LOADED:
                    application = await self._application(token)
                    last = await self.repository.last_chat_number(application.id)
                    await self.numbering.load_application(token, allocation.epoch, application.id, last)
                elif allocation.status == codes.CHAT_NOT_LOADED:
                    last = await self.repository.last_message_number(allocation.application_id, chat_number)
                    await self.numbering.load_chat(token, allocation.epoch, chat_number, last)
        except (RedisError, TimeoutError) as exc:
            raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
        except (OperationalError, InterfaceError):
            raise Unavailable("database unavailable") from None
        raise Unavailable("numbering is busy; try again", retry_after=1)

    async def _publish(self, queue: str, body: bytes) -> None:
        try:
            await self.publisher.publish(queue, body)
        except PublishError as exc:
            BUFFER.inc(metrics.API_PUBLISH_FAILURES, queue)
            raise Unavailable(str(exc), retry_after=1) from None
        BUFFER.inc(metrics.API_PUBLISHED, queue)

    async def _create_once(
        self,
        token: str,
        chat_number: int,
        text: str,
        key: str | None,
        allocate: Callable[[], Awaitable[Allocation]],
        publish: Callable[[int, int, Keyed | None], Awaitable[None]],
    ) -> tuple[int, bool]:
        """Number a create and publish it; with an idempotency key, a repeat re-publishes the same number.

        Returns ``(number, replayed)``. Re-publishing is safe: the writers' upsert ignores a create it already has.
        A key Redis does not know is looked up in MySQL while Redis may have forgotten it (see
        :mod:`chat_api.adapters.idempotency`), so a retry across a Redis loss still answers the first number.
        """
        if key is None:
            allocation = await self._allocate(allocate, token, chat_number)
            await publish(allocation.application_id, allocation.value, None)
            return allocation.value, False
        check_idempotency_key(key)
        scope = f"chats/{chat_number}/messages" if chat_number else "chats"
        keyed = Keyed(key, fingerprint(text))
        try:
            claim = await self.idempotency.claim(token, scope, key)
        except KeyInUse as busy:
            raise Conflict(
                f"a request with this Idempotency-Key is still in progress; retry in {busy.retry_after} s",
                retry_after=busy.retry_after,
            ) from None
        except RedisError as exc:
            raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
        try:
            earlier = claim.earlier
            if earlier is None and keys_may_be_forgotten(claim.epoch, time.time()):
                earlier = await self.stored_keys.find(token, chat_number, key)
                if earlier is not None:  # back into Redis, so that further retries stay off MySQL
                    await self.idempotency.record(token, scope, key, earlier)
            if earlier is None:
                allocation = await self._allocate(allocate, token, chat_number)
                earlier = Recorded(allocation.application_id, allocation.value, keyed.fingerprint)
                await self.idempotency.record(token, scope, key, earlier)
                replayed = False
            else:
                replayed = True
        except BaseException as exc:
            # No number was given: free the key. If Redis is down the claim lapses by itself, and the error
            # reported stays the one that stopped the create, never the cleanup's.
            if claim.earlier is None:
                with contextlib.suppress(RedisError):
                    await self.idempotency.release(token, scope, key)
            if isinstance(exc, RedisError):
                raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
            raise
        if earlier.fingerprint != keyed.fingerprint:
            raise Conflict("this Idempotency-Key was used for a different request")
        await publish(earlier.application_id, earlier.number, keyed)  # if this fails, a retry re-publishes it
        return earlier.number, replayed

    # -- applications ----------------------------------------------------------------------------------------
    async def create_application(self, name: object, idempotency_key: str | None = None) -> tuple[Application, bool]:
        """Create an application with a fresh token; a repeated idempotency key returns the first one."""
        return await asyncio.to_thread(self.applications.create, name, idempotency_key)

    async def get_application(self, token: str) -> Application:
        """The application behind a token."""
        return await self._application(token)

    async def list_applications(self, page: int = 1, per_page: int | None = None) -> Page:
        """A page of applications in creation order."""
        return await self._page(
            lambda offset, limit: asyncio.to_thread(self.applications.list, offset, limit), page, per_page
        )

    async def rename_application(self, token: str, name: object) -> Application:
        """Set an application's name."""
        application = await asyncio.to_thread(self.applications.rename, token, name)
        if application is None:
            raise NotFound("application not found")
        return application

    async def delete_application(self, token: str) -> int:
        """Delete an application and everything in it; returns how many messages went with it."""
        deleted = await asyncio.to_thread(self.applications.delete, token)
        if deleted is None:
            raise NotFound("application not found")
        return deleted

    # -- chats -----------------------------------------------------------------------------------------------
    async def create_chat(self, token: str, name: object, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Number a new chat and hand its row to the chat-writer; returns (chat number, replayed)."""
        name = self._name(name)
        queue = self.topology.chats.name
        return await self._create_once(
            token,
            0,
            name,
            idempotency_key,
            lambda: self.numbering.new_chat(token),
            lambda app, n, keyed: self._publish(queue, ChatUpsert(app, n, name, 0, *(keyed or ())).encode()),
        )

    async def get_chat(self, token: str, chat_number: int) -> Chat:
        """One chat."""
        return await self.repository.find_chat(token, chat_number)

    async def list_chats(
        self, token: str, page: int = 1, per_page: int | None = None, after: int | None = None
    ) -> Page:
        """A page of an application's chats in number order (after chat ``after`` when given)."""
        return await self._page(
            lambda offset, limit: self.repository.list_chats(token, after or 0, offset, limit), page, per_page, after
        )

    async def rename_chat(self, token: str, chat_number: int, name: object) -> tuple[Chat, bool]:
        """Rename a chat; returns ``(chat as stored, applied)``.

        The edit is versioned and made durable first (published to the chat-writer, as a create is), then
        applied to the row in this request, so the next read sees it. ``applied`` is False when the row is not
        written yet (or the database is unreachable): the queued edit is applied after the create, by version.
        """
        name = self._name(name)
        allocation = await self._allocate(lambda: self.numbering.edit_chat(token, chat_number), token, chat_number)
        change = ChatUpsert(allocation.application_id, chat_number, name, allocation.value)
        await self._publish(self.topology.chats.name, change.encode())
        try:
            await self.repository.rename_chat(allocation.application_id, chat_number, name, allocation.value)
            return await self.repository.find_chat(token, chat_number), True
        except (NotFound, DatabaseUnavailable):
            return Chat(chat_number, name, 0), False

    # -- messages --------------------------------------------------------------------------------------------
    async def create_message(
        self, token: str, chat_number: int, body: object, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Number a new message and hand it to the message-writer; returns (message number, replayed)."""
        body = self._body(body)
        queue = self.topology.messages.name
        return await self._create_once(
            token,
            chat_number,
            body,
            idempotency_key,
            lambda: self.numbering.new_message(token, chat_number),
            lambda app, n, keyed: self._publish(
                queue, MessageUpsert(app, chat_number, n, body, 0, *(keyed or ())).encode()
            ),
        )

    async def get_message(self, token: str, chat_number: int, message_number: int) -> Message:
        """One message."""
        return await self.repository.find_message(token, chat_number, message_number)

    async def list_messages(
        self, token: str, chat_number: int, page: int = 1, per_page: int | None = None, after: int | None = None
    ) -> Page:
        """A page of a chat's messages in number order (after message ``after`` when given)."""
        return await self._page(
            lambda offset, limit: self.repository.list_messages(token, chat_number, after or 0, offset, limit),
            page,
            per_page,
            after,
        )

    async def edit_message(
        self, token: str, chat_number: int, message_number: int, body: object
    ) -> tuple[Message, bool]:
        """Edit a message's body; returns ``(message as stored, applied)``, as :meth:`rename_chat`.

        The queued copy of the edit also brings the search index up to date (after the row, asynchronously).
        """
        body = self._body(body)
        allocation = await self._allocate(
            lambda: self.numbering.edit_message(token, chat_number, message_number), token, chat_number
        )
        change = MessageUpsert(allocation.application_id, chat_number, message_number, body, allocation.value)
        await self._publish(self.topology.messages.name, change.encode())
        try:
            await self.repository.edit_message(
                allocation.application_id, chat_number, message_number, body, allocation.value
            )
            return await self.repository.find_message(token, chat_number, message_number), True
        except (NotFound, DatabaseUnavailable):
            return Message(message_number, body), False

    async def search_messages(
        self, token: str, chat_number: int, query: str, page: int = 1, per_page: int | None = None
    ) -> Page:
        """Messages of one chat containing ``query`` (a fragment, case-insensitive), best matches first.

        The query's shape (present, not blank, not too long) is checked where it is parsed, in the resource.
        """
        application_id = await self.repository.locate(token, chat_number)
        started = time.perf_counter()
        try:
            result = await self._page(
                lambda offset, limit: self.search.search(application_id, chat_number, query, offset, limit),
                page,
                per_page,
            )
        except SearchUnavailable as exc:
            raise Unavailable(f"search unavailable: {exc}", retry_after=5) from None
        BUFFER.observe(metrics.SEARCH_SECONDS, time.perf_counter() - started, self.search.name)
        return result
