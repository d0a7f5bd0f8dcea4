"""The API's service layer: every rule of the product, and the order of the steps that keep it true.

Resources call these functions and shape the answers; adapters do the I/O. Nothing here knows HTTP.
Creates never touch MySQL: they number in Redis, hand the row to RabbitMQ with a confirm, and only then
return — so a number is reported only for a write the broker has durably accepted.

Everything here runs on the worker's event loop. The application lifecycle (:mod:`chat_common.tenancy`, shared
with the operator, synchronous) is rare admin work and runs in a worker thread, never on the loop.

Every tenant-scoped call first resolves its token through :meth:`ChatService.tenant` — the one place of the tenant
rules (unknown or expired token 404, suspended 403, per-tenant request rate 429) — from the per-process tenant
directory (no MySQL query per request). The per-tenant ``maxChats`` (409: a state conflict) and ``maxMessageBytes``
(422: the body is invalid) are checked where chats and messages are created. Admin operations do not go through it:
they work on suspended tenants too.
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
from chat_api.adapters.publisher import PublishError, stamp_numbering
from chat_api.adapters.recovery import keys_may_be_forgotten
from chat_api.metrics_buffer import BUFFER
from chat_api.model import (
    Application,
    Chat,
    Conflict,
    DatabaseUnavailable,
    Invalid,
    Message,
    NotFound,
    NumberingStillOpening,
    Page,
    RateLimited,
    Suspended,
    Unavailable,
)
from chat_api.ports import (
    Applications,
    IdempotencyPort,
    NumberingPort,
    Publisher,
    RateLimiterPort,
    RecoveryPort,
    Repository,
    SearchReader,
    StoredKeysPort,
    TenantDirectoryPort,
)
from chat_common import metrics
from chat_common.config import Settings
from chat_common.contracts import ChatUpsert, MessageUpsert
from chat_common.idempotency import KeyReused, caller_key, check_idempotency_key, fingerprint, request_fingerprint
from chat_common.search import SearchUnavailable
from chat_common.tenancy import DEFAULT_GRACE_SECONDS, TenantLimits, Usage, check_grace_seconds
from chat_common.topology import Topology
from chat_common.validation import clean_body, clean_name

MAX_PAGE = 100_000


class Keyed(NamedTuple):
    """The idempotency key of a create and its request's fingerprint, carried to the writer with the row."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class Limits:
    """The product's input limits, as configured (:class:`~chat_common.config.Settings` holds the defaults)."""

    max_name_chars: int = Settings.max_name_chars
    max_body_chars: int = Settings.max_body_chars
    default_page_size: int = Settings.default_page_size
    max_page_size: int = Settings.max_page_size
    max_query_chars: int = Settings.max_query_chars
    rate_limit_per_second: int = Settings.rate_limit_per_second  # default per tenant; a tenant's own overrides

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits of a running configuration."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


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
        tenants: TenantDirectoryPort,
        rate_limiter: RateLimiterPort,
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
        self.tenants = tenants
        self.rate_limiter = rate_limiter

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

    # -- tenants ---------------------------------------------------------------------------------------------
    async def tenant(self, token: str, fresh: bool = False) -> Application:
        """The application a token names, if that token may be served now: the tenant rules, in one place.

        Unknown token, or a rotated-away one past its grace period: 404 (:class:`NotFound`, the same answer, so
        an expired token tells nothing). Suspended: :class:`Suspended` (403). Over the tenant's requests per second
        (its own limit, else ``RATE_LIMIT_PER_SECOND``): :class:`RateLimited` (429). Resolved from the tenant
        directory (cached per process, bounded staleness); ``fresh`` asks MySQL (reads of the application itself).
        """
        application = await self.tenants.lookup(token, fresh)
        refusal = self._refusal(token, application)
        if refusal is not None:
            if refusal[0] != "unknown":
                BUFFER.inc(metrics.TENANT_REFUSALS, refusal[0])
            raise refusal[1]
        limit = application.limits.requests_per_second or self.limits.rate_limit_per_second
        if limit and not await self.rate_limiter.admit(application.id, limit):
            BUFFER.inc(metrics.TENANT_REFUSALS, "rate_limited")
            raise RateLimited(f"more than {limit} requests per second for this application", retry_after=1)
        return application

    @staticmethod
    def _refusal(token: str, application: Application | None) -> tuple[str, NotFound | Suspended] | None:
        """Why this token may not be served now (reason, error), or None: the 404 and 403 rules of :meth:`tenant`."""
        if application is None:
            return "unknown", NotFound("application not found")
        if token != application.token and not application.previous_token_valid(time.time()):
            return "expired_token", NotFound("application not found")
        if application.suspended:
            return "suspended", Suspended("application suspended")
        return None

    async def token_standing(self, token: str) -> tuple[str, str] | None:
        """For open live streams: ``(reason, error)`` when the token may no longer be served, else None.

        The rules of :meth:`tenant` (one place: :meth:`_refusal`) over the same cached directory, without the
        request rate (a stream re-checked by the hub's ticker is not a request). MySQL unreachable with nothing
        cached: None — a stream is not cut because the check could not be made; the next round checks again.
        """
        try:
            application = await self.tenants.lookup(token)
        except DatabaseUnavailable:
            return None
        refusal = self._refusal(token, application)
        return None if refusal is None else (refusal[0], str(refusal[1]))

    async def _from_replica(self, application: Application) -> bool:
        """Whether a lag-tolerant read of this tenant (a page, a search) may be answered by the read replica.

        Only while a replica may serve at all, and only when the tenant's last edit is older than how far behind
        the replica may be (:meth:`Repository.replica_lag_bound`): a client that just renamed a chat or edited a
        message reads it back wherever the read runs. Creates do not count: their rows are written after the
        201 in any case. When the edit clock cannot be read, the primary answers. The edit clock is Redis's time and
        the comparison uses this host's: clocks kept by NTP (milliseconds apart) stay well inside the bound's
        one-second margin; a host whose clock runs ahead of Redis's by more would send an editor to the replica early.
        """
        bound = self.repository.replica_lag_bound()
        if bound is None:
            return False
        try:
            last_edit = await self.numbering.last_edit(application.id)
        except (RedisError, TimeoutError):
            return False
        return last_edit is None or time.time() - last_edit > bound

    def _check_message_bytes(self, application: Application, body: str) -> None:
        limit = application.limits.max_message_bytes
        if limit and len(body.encode()) > limit:
            BUFFER.inc(metrics.TENANT_REFUSALS, "max_message_bytes")
            raise Invalid(f"body is larger than this application's limit of {limit} bytes (UTF-8)")

    async def _allocate(
        self, call: Callable[[], Awaitable[Allocation]], application: Application, chat_number: int = 0
    ) -> Allocation:
        """Run a numbering script, loading counters from MySQL or waiting out a recovery as needed."""
        legacy = application.previous_token or application.token  # the token the pre-upgrade counters are under
        try:
            for _ in range(5):
                stamp_numbering()  # the message publishing this number carries the time (numbering recovery)
                allocation = await call()
                if allocation.status == codes.OK:
                    return allocation
                if allocation.status == codes.NOT_FOUND:
                    raise NotFound("chat not found" if chat_number else "application not found")
                if allocation.status == codes.LIMIT_REACHED:
                    BUFFER.inc(metrics.TENANT_REFUSALS, "max_chats")
                    # A state conflict, not an invalid body: the same request succeeds once the limit is raised.
                    raise Conflict(f"this application has reached its limit of {application.limits.max_chats} chats")
                if allocation.status == codes.RECOVERING:
                    if not await self.recovery.attempt(application.id):
                        raise Unavailable("numbering is recovering after a cache restart", retry_after=1)
                elif allocation.status == codes.APPLICATION_NOT_LOADED:
                    last = await self.repository.last_chat_number(application.id)
                    await self.numbering.load_application(application.id, allocation.epoch, last, legacy)
                elif allocation.status == codes.CHAT_NOT_LOADED:
                    last = await self.repository.last_message_number(application.id, chat_number)
                    await self.numbering.load_chat(application.id, allocation.epoch, chat_number, last, legacy)
        except NumberingStillOpening:
            # Never numbered before: no cache restarted, the first opening of its numbering is taking long.
            raise Unavailable("numbering of this application is still opening for its first use; try again") from None
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
        application: Application,
        chat_number: int,
        text: str,
        key: str | None,
        allocate: Callable[[], Awaitable[Allocation]],
        publish: Callable[[int, int, Keyed | None], Awaitable[None]],
    ) -> tuple[int, bool]:
        """Number a create and publish it; with an idempotency key, a repeat re-publishes the same number.

        Returns ``(number, replayed)``. Re-publishing is safe: the writers' upsert ignores a create it already has.
        Keys are per application, so a retry with the new token of a create made with the old one replays.
        A key Redis does not know is looked up in MySQL while Redis may have forgotten it (see
        :mod:`chat_api.adapters.idempotency`), so a retry across a Redis loss still answers the first number.
        """
        if key is None:
            allocation = await self._allocate(allocate, application, chat_number)
            await publish(allocation.application_id, allocation.value, None)
            return allocation.value, False
        check_idempotency_key(key)
        app_id = application.id
        scope = f"chats/{chat_number}/messages" if chat_number else "chats"
        keyed = Keyed(key, fingerprint(text))
        stamp_numbering()  # a replay re-publishes a number this claim finds: stamped before it was read
        try:
            claim = await self.idempotency.claim(app_id, scope, key)
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
                earlier = await self.stored_keys.find(app_id, chat_number, key)
                if earlier is not None:  # back into Redis, so that further retries stay off MySQL
                    await self.idempotency.record(app_id, scope, key, earlier)
            if earlier is None:
                allocation = await self._allocate(allocate, application, chat_number)
                earlier = Recorded(allocation.application_id, allocation.value, keyed.fingerprint)
                await self.idempotency.record(app_id, scope, key, earlier)
                replayed = False
            else:
                replayed = True
        except BaseException as exc:
            # No number was given: free the key. If Redis is down the claim lapses by itself, and the error
            # reported stays the one that stopped the create, never the cleanup's.
            if claim.earlier is None:
                with contextlib.suppress(RedisError):
                    await self.idempotency.release(app_id, scope, key)
            if isinstance(exc, RedisError):
                raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
            raise
        if earlier.fingerprint != keyed.fingerprint:
            raise Conflict("this Idempotency-Key was used for a different request")
        await publish(earlier.application_id, earlier.number, keyed)  # if this fails, a retry re-publishes it
        return earlier.number, replayed

    # -- applications ----------------------------------------------------------------------------------------
    async def create_application(
        self, name: object, idempotency_key: str | None = None, caller: str = ""
    ) -> tuple[Application, bool]:
        """Create an application with a fresh token; a repeated idempotency key returns the first one.

        The key is scoped to ``caller`` (who authenticated: the resource says) and bound to the request's
        fingerprint: another caller's key, or the operator's, names nothing here (a new application), and the same
        key with a different name is a :class:`Conflict` (409).
        """
        name = self._name(name)
        if idempotency_key is None:
            return await asyncio.to_thread(self.applications.create, name)
        stored = caller_key(caller, idempotency_key)
        request = request_fingerprint("POST", "/applications", {"name": name})
        try:
            return await asyncio.to_thread(self.applications.create, name, stored, request)
        except KeyReused:
            raise Conflict("this Idempotency-Key was used for a different request") from None

    async def get_application(self, token: str) -> Application:
        """The application behind a token (read afresh: a rename shows at once).

        Through a former token (grace period) it shows that token, never the current one: see
        :meth:`~chat_common.tenancy.Application.seen_with`.
        """
        return (await self.tenant(token, fresh=True)).seen_with(token)

    async def list_applications(self, page: int = 1, per_page: int | None = None) -> Page:
        """A page of applications in creation order."""
        return await self._page(
            lambda offset, limit: asyncio.to_thread(self.applications.list, offset, limit), page, per_page
        )

    async def rename_application(self, token: str, name: object) -> Application:
        """Set an application's name; answered as seen with ``token`` (a former token never shows the new one)."""
        await self.tenant(token)
        application = await asyncio.to_thread(self.applications.rename, token, name)
        self.tenants.invalidate(token)
        if application is None:
            raise NotFound("application not found")
        return application.seen_with(token)

    async def delete_application(self, token: str) -> int:
        """Delete an application and everything in it; returns how many messages went with it (admin)."""
        deleted = await asyncio.to_thread(self.applications.delete, token)
        self.tenants.invalidate(token)
        if deleted is None:
            raise NotFound("application not found")
        return deleted

    # -- tenant management (admin: works on suspended tenants too) -------------------------------------------
    async def _admin_find(self, token: str) -> Application:
        application = await asyncio.to_thread(self.applications.find, token)
        if application is None:
            raise NotFound("application not found")
        return application

    def _changed(self, token: str, application: Application | None) -> Application:
        # This process sees the change at once; the others within the directory's staleness bound.
        self.tenants.invalidate(token)
        if application is not None:
            self.tenants.invalidate(application.token)
        if application is None:
            raise NotFound("application not found")
        return application

    async def admin_application(self, token: str) -> Application:
        """An application with its state, limits and token rotation, whatever its state (admin)."""
        return await self._admin_find(token)

    async def suspend_application(self, token: str, suspended: bool) -> Application:
        """Suspend (its tokens answer 403; nothing is deleted) or resume an application (admin)."""
        found = await self._admin_find(token)
        application = await asyncio.to_thread(self.applications.set_suspended, found.id, suspended)
        if application is not None and found.suspended != suspended:
            metrics.TENANT_SUSPENSIONS.labels("suspend" if suspended else "resume", "api").inc()
        return self._changed(token, application)

    async def rotate_token(self, token: str, grace_seconds: object = None) -> Application:
        """Give the application a new token; the current one keeps working ``grace_seconds`` (default 24 h) (admin).

        Chats, messages, counters, numbering and search documents stay with the application.
        """
        grace = check_grace_seconds(DEFAULT_GRACE_SECONDS if grace_seconds is None else grace_seconds)
        found = await self._admin_find(token)
        application, _ = await asyncio.to_thread(self.applications.rotate_token, found.id, grace)
        if application is not None:
            metrics.TENANT_ROTATIONS.labels("api").inc()
        return self._changed(token, application)

    async def set_limits(self, token: str, limits: object, merge: bool = False) -> Application:
        """Set the tenant's limits (``merge``: only the ones given; else the ones not given return to the default)."""
        found = await self._admin_find(token)
        if limits is None:
            raise Invalid("send the limits in the body")
        if merge and isinstance(limits, dict):
            limits = {**found.limits.public(), **limits}
        parsed = TenantLimits.parse(limits)
        return self._changed(token, await asyncio.to_thread(self.applications.set_limits, found.id, parsed))

    async def usage(self, token: str) -> Usage:
        """Chats and messages (as of the last count sync), last activity and state (admin)."""
        found = await self._admin_find(token)
        usage = await asyncio.to_thread(self.applications.usage, found.id)
        if usage is None:
            raise NotFound("application not found")
        return usage

    # -- chats -----------------------------------------------------------------------------------------------
    async def create_chat(self, token: str, name: object, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Number a new chat and hand its row to the chat-writer; returns (chat number, replayed)."""
        application = await self.tenant(token)
        name = self._name(name)
        queue = self.topology.chats.name
        max_chats = application.limits.max_chats or 0
        return await self._create_once(
            application,
            0,
            name,
            idempotency_key,
            lambda: self.numbering.new_chat(application.id, max_chats),
            lambda app, n, keyed: self._publish(queue, ChatUpsert(app, n, name, 0, *(keyed or ())).encode()),
        )

    async def get_chat(self, token: str, chat_number: int) -> Chat:
        """One chat."""
        application = await self.tenant(token)
        return await self.repository.find_chat(application.id, chat_number)

    async def list_chats(
        self, token: str, page: int = 1, per_page: int | None = None, after: int | None = None
    ) -> Page:
        """A page of an application's chats in number order (after chat ``after`` when given)."""
        application = await self.tenant(token)
        replica = await self._from_replica(application)
        return await self._page(
            lambda offset, limit: self.repository.list_chats(application.id, after or 0, offset, limit, replica),
            page,
            per_page,
            after,
        )

    async def rename_chat(self, token: str, chat_number: int, name: object) -> tuple[Chat, bool]:
        """Rename a chat; returns ``(chat as stored, applied)``.

        The edit is versioned and made durable first (published to the chat-writer, as a create is), then
        applied to the row in this request, so the next read sees it. ``applied`` is False when the row is not
        written yet (or the database is unreachable): the queued edit is applied after the create, by version.
        """
        application = await self.tenant(token)
        name = self._name(name)
        allocation = await self._allocate(
            lambda: self.numbering.edit_chat(application.id, chat_number), application, chat_number
        )
        change = ChatUpsert(allocation.application_id, chat_number, name, allocation.value)
        await self._publish(self.topology.chats.name, change.encode())
        try:
            await self.repository.rename_chat(allocation.application_id, chat_number, name, allocation.value)
            return await self.repository.find_chat(application.id, chat_number), True
        except (NotFound, DatabaseUnavailable):
            return Chat(chat_number, name, 0), False

    # -- messages --------------------------------------------------------------------------------------------
    async def create_message(
        self, token: str, chat_number: int, body: object, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Number a new message and hand it to the message-writer; returns (message number, replayed)."""
        application = await self.tenant(token)
        body = self._body(body)
        self._check_message_bytes(application, body)
        queue = self.topology.messages.name
        return await self._create_once(
            application,
            chat_number,
            body,
            idempotency_key,
            lambda: self.numbering.new_message(application.id, chat_number),
            lambda app, n, keyed: self._publish(
                queue, MessageUpsert(app, chat_number, n, body, 0, *(keyed or ())).encode()
            ),
        )

    async def get_message(self, token: str, chat_number: int, message_number: int) -> Message:
        """One message."""
        application = await self.tenant(token)
        return await self.repository.find_message(application.id, chat_number, message_number)

    async def list_messages(
        self, token: str, chat_number: int, page: int = 1, per_page: int | None = None, after: int | None = None
    ) -> Page:
        """A page of a chat's messages in number order (after message ``after`` when given)."""
        application = await self.tenant(token)
        replica = await self._from_replica(application)
        return await self._page(
            lambda offset, limit: self.repository.list_messages(
                application.id, chat_number, after or 0, offset, limit, replica
            ),
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
        application = await self.tenant(token)
        body = self._body(body)
        self._check_message_bytes(application, body)
        allocation = await self._allocate(
            lambda: self.numbering.edit_message(application.id, chat_number, message_number), application, chat_number
        )
        change = MessageUpsert(allocation.application_id, chat_number, message_number, body, allocation.value)
        await self._publish(self.topology.messages.name, change.encode())
        try:
            await self.repository.edit_message(
                allocation.application_id, chat_number, message_number, body, allocation.value
            )
            return await self.repository.find_message(application.id, chat_number, message_number), True
        except (NotFound, DatabaseUnavailable):
            return Message(message_number, body), False

    async def search_messages(
        self, token: str, chat_number: int, query: str, page: int = 1, per_page: int | None = None
    ) -> Page:
        """Messages of one chat containing ``query`` (a fragment, case-insensitive), best matches first.

        The query's shape (present, not blank, not too long) is checked where it is parsed, in the resource.
        Search documents are keyed by application id, so they follow the application through token rotations.
        """
        application = await self.tenant(token)
        await self.repository.locate(application.id, chat_number)  # the primary: a new chat is not missing
        replica = await self._from_replica(application)
        started = time.perf_counter()
        try:
            result = await self._page(
                lambda offset, limit: self.search.search(application.id, chat_number, query, offset, limit, replica),
                page,
                per_page,
            )
        except SearchUnavailable as exc:
            raise Unavailable(f"search unavailable: {exc}", retry_after=5) from None
        BUFFER.observe(metrics.SEARCH_SECONDS, time.perf_counter() - started, self.search.name)
        return result

    # -- live streams (chat_api.streams) ---------------------------------------------------------------------
    async def stream_position(self, token: str, chat_number: int, after: int | None) -> tuple[int, int]:
        """Where a live stream of a chat starts: ``(application id, last message number the client has)``.

        The same tenant rules and the same 404 as every chat route (the chat must belong to the token's
        application). Without ``after`` the stream starts after the chat's newest stored message.
        """
        application = await self.tenant(token)
        await self.repository.locate(application.id, chat_number)
        if after is None:
            after = await self.repository.last_message_number(application.id, chat_number)
        return application.id, after
