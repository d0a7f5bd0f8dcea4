"""The API's service layer: every rule of the product, and the order of the steps that keep it true.

Resources call these functions and shape the answers; adapters do the I/O. Nothing here knows HTTP.
Creates never touch MySQL: they number in Redis, hand the row to RabbitMQ with a confirm, and only then
return — so a number is reported only for a write the broker has durably accepted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from chat_api.adapters import numbering as codes
from chat_api.adapters.idempotency import IdempotencyStore, KeyInUse, Recorded, fingerprint
from chat_api.adapters.numbering import Allocation, Numbering
from chat_api.adapters.publisher import ConfirmingPublisher, PublishError
from chat_api.adapters.recovery import NumberingRecovery
from chat_api.adapters.repository import SqlRepository
from chat_api.model import Application, Chat, Conflict, Invalid, Message, NotFound, Page, Unavailable
from chat_common import metrics
from chat_common.contracts import ChatUpsert, MessageUpsert
from chat_common.search import SearchBackend, SearchUnavailable
from chat_common.tenancy import Applications, valid_idempotency_key
from chat_common.topology import Topology
from chat_common.validation import clean_body, clean_name

MAX_PAGE = 100_000


@dataclass(frozen=True)
class Limits:
    """The product's input limits."""

    max_name_chars: int = 255
    max_body_chars: int = 10_000
    default_page_size: int = 20
    max_page_size: int = 100
    max_query_chars: int = 200


class ChatService:
    """Applications, chats and messages: the operations behind every endpoint."""

    def __init__(
        self,
        *,
        applications: Applications,
        repository: SqlRepository,
        numbering: Numbering,
        recovery: NumberingRecovery,
        publisher: ConfirmingPublisher,
        topology: Topology,
        limits: Limits,
        search: SearchBackend,
        idempotency: IdempotencyStore,
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

    # -- helpers ---------------------------------------------------------------------------------------------
    def _name(self, value: object) -> str:
        return clean_name(value, self.limits.max_name_chars)

    def _body(self, value: object) -> str:
        return clean_body(value, self.limits.max_body_chars)

    def page_bounds(self, page: int, per_page: int | None) -> tuple[int, int]:
        """Validate pagination; returns (page, per_page)."""
        per_page = self.limits.default_page_size if per_page is None else per_page
        if not 1 <= per_page <= self.limits.max_page_size:
            raise Invalid(f"per_page must be between 1 and {self.limits.max_page_size}")
        if not 1 <= page <= MAX_PAGE:
            raise Invalid(f"page must be between 1 and {MAX_PAGE}")
        return page, per_page

    def _page(self, fetch: Callable[[int, int], list], page: int, per_page: int | None) -> Page:
        page, per_page = self.page_bounds(page, per_page)
        rows = fetch((page - 1) * per_page, per_page + 1)
        return Page(rows[:per_page], page, per_page, has_next=len(rows) > per_page)

    def _application(self, token: str) -> Application:
        application = self.applications.find(token)
        if application is None:
            raise NotFound("application not found")
        return application

    def _allocate(self, call: Callable[[], Allocation], token: str, chat_number: int = 0) -> Allocation:
        """Run a numbering script, loading counters from MySQL or waiting out a recovery as needed."""
        try:
            for _ in range(5):
                allocation = call()
                if allocation.status == codes.OK:
                    return allocation
                if allocation.status == codes.NOT_FOUND:
                    raise NotFound("chat not found" if chat_number else "application not found")
                if allocation.status == codes.RECOVERING:
                    if not self.recovery.attempt():
                        raise Unavailable("numbering is recovering after a cache restart", retry_after=1)
                elif allocation.status == codes.APPLICATION_NOT_LOADED:
                    application = self._application(token)
                    last = self.repository.last_chat_number(application.id)
                    self.numbering.load_application(token, allocation.epoch, application.id, last)
                elif allocation.status == codes.CHAT_NOT_LOADED:
                    last = self.repository.last_message_number(allocation.application_id, chat_number)
                    self.numbering.load_chat(token, allocation.epoch, chat_number, last)
        except redis.RedisError as exc:
            raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
        except (OperationalError, InterfaceError):
            raise Unavailable("database unavailable") from None
        raise Unavailable("numbering is busy; try again", retry_after=1)

    def _publish(self, queue: str, body: bytes) -> None:
        try:
            self.publisher.publish(queue, body)
        except PublishError as exc:
            metrics.API_PUBLISH_FAILURES.labels(queue).inc()
            raise Unavailable(str(exc), retry_after=1) from None
        metrics.API_PUBLISHED.labels(queue).inc()

    def _create_once(
        self,
        token: str,
        chat_number: int,
        text: str,
        key: str | None,
        allocate: Callable[[], Allocation],
        publish: Callable[[int, int], None],
    ) -> tuple[int, bool]:
        """Number a create and publish it; with an idempotency key, a repeat re-publishes the same number.

        Returns ``(number, replayed)``. Re-publishing is safe: the writers' upsert ignores a create it already has.
        """
        if key is None:
            allocation = self._allocate(allocate, token, chat_number)
            publish(allocation.application_id, allocation.value)
            return allocation.value, False
        if not valid_idempotency_key(key):
            raise Invalid("Idempotency-Key must be 1-128 printable ASCII characters without spaces")
        scope = f"chats/{chat_number}/messages" if chat_number else "chats"
        digest = fingerprint(text)
        try:
            earlier = self.idempotency.claim(token, scope, key)
        except KeyInUse:
            raise Conflict("a request with this Idempotency-Key is still in progress") from None
        except redis.RedisError as exc:
            raise Unavailable(f"numbering store unavailable: {exc.__class__.__name__}") from None
        if earlier is not None:
            if earlier.fingerprint != digest:
                raise Conflict("this Idempotency-Key was used for a different request")
            publish(earlier.application_id, earlier.number)
            return earlier.number, True
        try:
            allocation = self._allocate(allocate, token, chat_number)
            self.idempotency.record(token, scope, key, Recorded(allocation.application_id, allocation.value, digest))
        except BaseException:
            self.idempotency.release(token, scope, key)  # no number was given: the key is free again
            raise
        publish(allocation.application_id, allocation.value)  # if this fails, a retry re-publishes the same number
        return allocation.value, False

    # -- applications ----------------------------------------------------------------------------------------
    def create_application(self, name: object, idempotency_key: str | None = None) -> tuple[Application, bool]:
        """Create an application with a fresh token; a repeated idempotency key returns the first one."""
        return self.applications.create(name, idempotency_key)

    def get_application(self, token: str) -> Application:
        """The application behind a token."""
        return self._application(token)

    def list_applications(self, page: int = 1, per_page: int | None = None) -> Page:
        """A page of applications in creation order."""
        return self._page(self.applications.list, page, per_page)

    def rename_application(self, token: str, name: object) -> Application:
        """Set an application's name."""
        application = self.applications.rename(token, name)
        if application is None:
            raise NotFound("application not found")
        return application

    def delete_application(self, token: str) -> int:
        """Delete an application and everything in it; returns how many messages went with it."""
        deleted = self.applications.delete(token)
        if deleted is None:
            raise NotFound("application not found")
        return deleted

    # -- chats -----------------------------------------------------------------------------------------------
    def create_chat(self, token: str, name: object, idempotency_key: str | None = None) -> tuple[int, bool]:
        """Number a new chat and hand its row to the chat-writer; returns (chat number, replayed)."""
        name = self._name(name)
        return self._create_once(
            token,
            0,
            name,
            idempotency_key,
            lambda: self.numbering.new_chat(token),
            lambda app, n: self._publish(self.topology.chats.name, ChatUpsert(app, n, name).encode()),
        )

    def get_chat(self, token: str, chat_number: int) -> Chat:
        """One chat."""
        chat = self.repository.find_chat(self._application(token).id, chat_number)
        if chat is None:
            raise NotFound("chat not found")
        return chat

    def list_chats(self, token: str, page: int = 1, per_page: int | None = None) -> Page:
        """A page of an application's chats in number order."""
        application_id = self._application(token).id
        return self._page(lambda o, n: self.repository.list_chats(application_id, o, n), page, per_page)

    def rename_chat(self, token: str, chat_number: int, name: object) -> Chat:
        """Rename a chat through the chat-writer (versioned, so an older rename never wins)."""
        name = self._name(name)
        allocation = self._allocate(lambda: self.numbering.edit_chat(token, chat_number), token, chat_number)
        change = ChatUpsert(allocation.application_id, chat_number, name, allocation.value)
        self._publish(self.topology.chats.name, change.encode())
        current = self.repository.find_chat(allocation.application_id, chat_number)
        return Chat(chat_number, name, current.messages_count if current else 0)

    # -- messages --------------------------------------------------------------------------------------------
    def create_message(
        self, token: str, chat_number: int, body: object, idempotency_key: str | None = None
    ) -> tuple[int, bool]:
        """Number a new message and hand it to the message-writer; returns (message number, replayed)."""
        body = self._body(body)
        return self._create_once(
            token,
            chat_number,
            body,
            idempotency_key,
            lambda: self.numbering.new_message(token, chat_number),
            lambda app, n: self._publish(
                self.topology.messages.name, MessageUpsert(app, chat_number, n, body).encode()
            ),
        )

    def get_message(self, token: str, chat_number: int, message_number: int) -> Message:
        """One message."""
        message = self.repository.find_message(self._application(token).id, chat_number, message_number)
        if message is None:
            raise NotFound("message not found")
        return message

    def list_messages(self, token: str, chat_number: int, page: int = 1, per_page: int | None = None) -> Page:
        """A page of a chat's messages in number order."""
        application_id = self._application(token).id
        if self.repository.find_chat(application_id, chat_number) is None:
            raise NotFound("chat not found")
        return self._page(lambda o, n: self.repository.list_messages(application_id, chat_number, o, n), page, per_page)

    def edit_message(self, token: str, chat_number: int, message_number: int, body: object) -> Message:
        """Edit a message's body through the message-writer (versioned, so an older edit never wins)."""
        body = self._body(body)
        allocation = self._allocate(
            lambda: self.numbering.edit_message(token, chat_number, message_number), token, chat_number
        )
        change = MessageUpsert(allocation.application_id, chat_number, message_number, body, allocation.value)
        self._publish(self.topology.messages.name, change.encode())
        return Message(message_number, body)

    def search_messages(
        self, token: str, chat_number: int, query: str, page: int = 1, per_page: int | None = None
    ) -> Page:
        """Messages of one chat containing ``query`` (a fragment, case-insensitive), best matches first."""
        if not query or not query.strip():
            raise Invalid("query must not be blank")
        if len(query) > self.limits.max_query_chars:
            raise Invalid(f"query must be at most {self.limits.max_query_chars} characters")
        application_id = self._application(token).id
        if self.repository.find_chat(application_id, chat_number) is None:
            raise NotFound("chat not found")
        started = time.perf_counter()
        try:
            result = self._page(
                lambda o, n: self.search.search(application_id, chat_number, query, o, n), page, per_page
            )
        except SearchUnavailable as exc:
            raise Unavailable(f"search unavailable: {exc}", retry_after=5) from None
        metrics.SEARCH_SECONDS.labels(self.search.name).observe(time.perf_counter() - started)
        return result
