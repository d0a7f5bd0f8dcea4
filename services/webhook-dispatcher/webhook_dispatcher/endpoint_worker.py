"""One endpoint's deliveries: the asyncio task a dispatcher process runs for each endpoint it holds the lease of.

**Order and completeness.** ``position`` says where in the application's event log the endpoint is: every event up
to it was delivered, given up, or is held in ``webhook_held``. Each turn of the loop:

1. *Retries.* For each held chat whose head (its oldest held event) is due: deliver it; on success delete it and
   deliver the chat's next held event right away; on a retriable failure count the attempt and set the next time from
   the schedule (later still if the receiver's ``Retry-After`` says so); when the schedule is exhausted, or the
   failure is not retriable, give the event up (deleted, counted, logged) and go on with the chat.
2. *The log.* Read the application's next page after ``position`` (the API's own statement,
   ``chat_common.wire.event_pages``), keep the event types the endpoint wants, and deliver — concurrently across
   chats, strictly one at a time and in id order within a chat. A chat with held events gets its new events held
   behind them (attempts 0); an event whose delivery fails retriably is held (attempts 1) with the rest of its chat's
   page behind it. When the whole page is settled, **one transaction** inserts the held rows and moves ``position``
   to the page's end (or to the log's head the read saw, when the page was not full). A crash before that commit
   delivers the page again: at least once, with the same ``webhook-id`` (receivers deduplicate by it).

**A receiver that is down.** While deliveries fail with no success in between (``state = failing``), step 2 is not
taken as long as anything is held: the log itself is the backlog, so a receiver down for hours does not get the whole
log copied into ``webhook_held`` — only one page, whose heads' retries are the probes. The first success resumes it.
Failing for longer than ``WEBHOOK_DISABLE_AFTER_SECONDS`` disables the endpoint, as a 410 does at once.

**State.** ``state``, ``failing_since``, ``last_success_at``, ``last_failure_at`` and ``last_error`` are written on
a change of state, else at most once a second — not once per delivery.

**Replay.** An admin's replay sets ``position`` and deletes the held rows. The move of ``position`` is a
compare-and-set on the value this worker started from, so it fails then and the worker re-reads the row; a replay of
an idle endpoint is seen at the next lease renewal (the row's position differs from the worker's).

**Waking.** An idle worker sleeps until the dispatcher's head watcher wakes it (the log's head moved) or its next held
delivery is due: no polling per endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from chat_common.tenancy.tokens import TokenSealer
from chat_common.wire.event_pages import LoggedEvent
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.delivery import Attempt, Outcome, Sender
from webhook_dispatcher.metrics import DELIVERIES, DELIVERY_LATENCY_SECONDS
from webhook_dispatcher.schedule import retry_delay
from webhook_dispatcher.signing import signed_headers
from webhook_dispatcher.store import Endpoint, HeldEvent, Store

log = logging.getLogger(__name__)

HEALTH_WRITE_SECONDS = 1.0  # state columns are written on a change, else at most this often
IDLE_SECONDS = 30.0  # an idle worker's longest sleep without a wake-up (a safety net, not the mechanism)
ERROR_BACKOFF_SECONDS = 1.0  # after an unexpected error (the database away), before the loop starts over

RunDb = Callable[..., Awaitable[Any]]  # runs a blocking Store call on the dispatcher's thread pool


def envelope(event: LoggedEvent) -> bytes:
    """The webhook body (Standard Webhooks' recommended shape): the event exactly as the REST API shows it."""
    data = event.public()
    return orjson.dumps({"type": event.type, "timestamp": data["committed_at"], "data": data})


def message_id(event: LoggedEvent) -> str:
    """The ``webhook-id``: the same on every redelivery of an event."""
    return f"evt_{event.position}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Health:
    """The endpoint's delivery state as this worker sees it, and whether it is time to write it down."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.state = "failing" if endpoint.state == "failing" else "healthy"
        self.failing_since = endpoint.failing_since if self.failing else None
        self.last_success_at: datetime.datetime | None = None
        self.last_failure_at: datetime.datetime | None = None
        self.last_error: str | None = None
        self._changed = False
        self._dirty = False
        self._written = 0.0

    @property
    def failing(self) -> bool:
        """Deliveries failed with no success since."""
        return self.state == "failing"

    def success(self, now: datetime.datetime) -> None:
        """A delivery succeeded at ``now``."""
        if self.failing:
            self.state, self.failing_since, self._changed = "healthy", None, True
        self.last_success_at, self._dirty = now, True

    def failure(self, now: datetime.datetime, error: str) -> None:
        """A delivery failed at ``now`` with ``error`` (no secret, no URL in it)."""
        if not self.failing:
            self.state, self.failing_since, self._changed = "failing", now, True
        self.last_failure_at, self.last_error, self._dirty = now, error, True

    @property
    def dirty(self) -> bool:
        """Something is not written yet."""
        return self._dirty or self._changed

    def due(self) -> bool:
        """Time to write the state: it changed, or a second passed since the last write."""
        return self._changed or (self._dirty and time.monotonic() - self._written >= HEALTH_WRITE_SECONDS)

    def written(self) -> None:
        """The state was just written."""
        self._changed = self._dirty = False
        self._written = time.monotonic()


class EndpointWorker:
    """Delivers one endpoint's events (module docstring); :meth:`run` is its task."""

    def __init__(
        self,
        endpoint: Endpoint,
        store: Store,
        sender: Sender,
        sealer: TokenSealer | None,
        config: DispatcherConfig,
        run_db: RunDb,
    ) -> None:
        self.endpoint = endpoint
        self.store = store
        self.sender = sender
        self.sealer = sealer
        self.config = config
        self.db = run_db
        self.position = endpoint.position
        self.health = Health(endpoint)
        self.disabled = False
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._health_lock = asyncio.Lock()
        self._check_position = False
        self._gone: Attempt | None = None
        self._next_due: datetime.datetime | None = None
        self._held_chats: set[int] = set()
        self._heads_known = False  # whether _held_chats is up to date (only this worker holds; a replay deletes)

    # -- what the dispatcher tells it ------------------------------------------------------------------------------
    def wake(self) -> None:
        """The log's head moved: look for new events."""
        self._wake.set()

    def refresh(self, endpoint: Endpoint) -> None:
        """The row as the last lease renewal read it (URL, secrets, event types may have changed)."""
        self.endpoint = endpoint
        if endpoint.position != self.position:  # a replay, or a move of ours the read raced with: re-read to know
            self._check_position = True
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until disabled or cancelled (the lease lost, or the process stopping)."""
        while not self.disabled:
            try:
                await self._turn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "endpoint %d (%s): delivery loop failed; starting over", self.endpoint.id, self.endpoint.host
                )
                self._check_position = True
                await asyncio.sleep(ERROR_BACKOFF_SECONDS)

    async def _turn(self) -> None:
        self._wake.clear()
        if self._check_position:
            self._check_position = False
            self._heads_known = False  # a replay deletes the held rows
            await self._reread_position()
        secrets = self._secrets()
        if not secrets:
            self.health.failure(_now(), "the signing secret does not open with this deployment's WEBHOOK_SEALING_KEY")
            await self._write_health(force=False)
            await self._sleep(IDLE_SECONDS)
            return
        await self._retry_due(secrets)
        if self.disabled:
            return
        more = False
        if not (self.health.failing and self._held_chats):  # a failing receiver is probed by the retries alone
            more = await self._next_page(secrets)
        if self.disabled:
            return
        await self._write_health(force=False)
        if not more:
            wait = IDLE_SECONDS
            if self._next_due is not None:
                wait = min(wait, max(0.0, (self._next_due - _now()).total_seconds()))
            if self.health.dirty:  # written within a second, even when nothing more happens
                wait = min(wait, HEALTH_WRITE_SECONDS)
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _reread_position(self) -> None:
        position = await self.db(self.store.position, self.endpoint.id)
        if position is not None and position != self.position:
            log.info(
                "endpoint %d (%s): position moved from %d to %d (replay); going on from there",
                self.endpoint.id,
                self.endpoint.host,
                self.position,
                position,
            )
            self.position = position

    def _secrets(self) -> list[str]:
        """The secrets to sign with: the current one, and the previous one until it expires."""
        if self.sealer is None:
            return []
        context = self.endpoint.secret_context
        current = self.sealer.unseal_for(self.endpoint.secret_sealed, context)
        if current is None:
            return []
        secrets = [current]
        expires = self.endpoint.previous_secret_expires_at
        if self.endpoint.previous_secret_sealed and expires is not None and expires > _now():
            previous = self.sealer.unseal_for(self.endpoint.previous_secret_sealed, context)
            if previous is not None:
                secrets.append(previous)
        return secrets

    # -- step 1: held deliveries -----------------------------------------------------------------------------------
    async def _retry_due(self, secrets: list[str]) -> None:
        if self._heads_known and not self._held_chats:
            return  # nothing held: no read (this runs at every move of the log's head)
        heads = await self.db(self.store.heads, self.endpoint.id)
        now = _now()
        due = [head for head in heads if head.next_attempt_at <= now]
        if due:
            await asyncio.gather(*(self._retry_chat(head, secrets) for head in due))
            heads = [] if self.disabled else await self.db(self.store.heads, self.endpoint.id)
        self._held_chats = {head.chat_number for head in heads}
        self._heads_known = True
        self._next_due = min((head.next_attempt_at for head in heads), default=None)

    async def _retry_chat(self, held: HeldEvent | None, secrets: list[str]) -> None:
        """Deliver a held chat's due head, then the events behind it, until one fails retriably."""
        endpoint = self.endpoint
        while held is not None and not self.disabled and (held.attempts == 0 or held.next_attempt_at <= _now()):
            event = await self.db(self.store.event, endpoint.application_id, held.event_id)
            if event is None or event.type not in endpoint.event_types:  # pruned from the log, or no longer wanted
                await self.db(self.store.settle, endpoint.id, held.event_id)
            else:
                attempt = await self._deliver(event, secrets)
                if attempt.outcome is Outcome.GONE:
                    await self._disable_gone(attempt)
                    return
                if attempt.outcome is Outcome.RETRY:
                    failures = held.attempts + 1
                    delay = retry_delay(self.config.retry_schedule, failures)
                    if delay is not None:
                        now = _now()
                        wait = max(delay, attempt.retry_after or 0.0)
                        later = HeldEvent(
                            held.chat_number,
                            held.event_id,
                            failures,
                            now + datetime.timedelta(seconds=wait),
                            held.first_failed_at or now,
                        )
                        await self.db(self.store.reschedule, endpoint.id, later)
                        DELIVERIES.labels("retried").inc()
                        return
                    self._give_up(event, attempt, f"after {failures} attempts")
                elif attempt.outcome is not Outcome.DELIVERED:
                    self._give_up(event, attempt, "not retriable")
                await self.db(self.store.settle, endpoint.id, held.event_id)
            held = await self.db(self.store.chat_head, endpoint.id, held.chat_number)

    # -- step 2: the log -------------------------------------------------------------------------------------------
    async def _next_page(self, secrets: list[str]) -> bool:
        """Deliver the next page of the log and move past it; whether more may be read at once."""
        endpoint, old = self.endpoint, self.position
        limit = self.config.page_size
        page = await self.db(self.store.scan, endpoint.application_id, old, limit)
        full = len(page.events) >= limit
        last = page.events[-1].position if page.events else old
        new = last if full else max(old, last, page.head)
        chats: dict[int, list[LoggedEvent]] = {}
        for event in page.events:
            if event.type in endpoint.event_types:
                chats.setdefault(event.chat_number, []).append(event)
        now = _now()
        held: list[HeldEvent] = []
        delivering = []
        for chat, events in chats.items():
            if chat in self._held_chats:  # behind the chat's held head: in order, after it
                held += [HeldEvent(chat, event.position, 0, now, None) for event in events]
            else:
                delivering.append(self._deliver_chat(events, secrets))
        for chat_held in await asyncio.gather(*delivering):
            held += chat_held
        if self._gone is not None:
            await self._disable_gone(self._gone)
            return False
        if new == old and not held:
            return False
        if not await self.db(self.store.advance, endpoint.id, old, new, held):
            self._check_position = True  # a replay moved it, or the lease is gone: the row says which
            return True
        self.position = new
        if held:  # the chats just held, and when their heads are due (the sleep must end then)
            self._held_chats |= {h.chat_number for h in held}
            due = min(h.next_attempt_at for h in held)
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        return full

    async def _deliver_chat(self, events: list[LoggedEvent], secrets: list[str]) -> list[HeldEvent]:
        """Deliver one chat's events of a page in order; what is to be held (from a retriable failure on)."""
        for index, event in enumerate(events):
            if self._gone is not None:
                return []
            attempt = await self._deliver(event, secrets)
            if attempt.outcome is Outcome.DELIVERED:
                continue
            if attempt.outcome is Outcome.GONE:
                self._gone = attempt
                return []
            if attempt.outcome is Outcome.RETRY:
                now = _now()
                wait = max(retry_delay(self.config.retry_schedule, 1) or 0.0, attempt.retry_after or 0.0)
                DELIVERIES.labels("retried").inc()
                first = HeldEvent(event.chat_number, event.position, 1, now + datetime.timedelta(seconds=wait), now)
                return [first] + [HeldEvent(e.chat_number, e.position, 0, now, None) for e in events[index + 1 :]]
            self._give_up(event, attempt, "not retriable")
        return []

    # -- one delivery ----------------------------------------------------------------------------------------------
    async def _deliver(self, event: LoggedEvent, secrets: list[str]) -> Attempt:
        body = envelope(event)
        async with self._slots:
            headers = signed_headers(secrets, message_id(event), int(time.time()), body)  # signed when sent
            attempt = await self.sender.post(self.endpoint.url, headers, body)
        now = _now()
        if attempt.outcome is Outcome.DELIVERED:
            DELIVERIES.labels("delivered").inc()
            DELIVERY_LATENCY_SECONDS.observe(max(0.0, (now - event.committed_at).total_seconds()))
            self.health.success(now)
        else:
            self.health.failure(now, attempt.error)
        if self.health.due():
            await self._write_health(force=False)
        return attempt

    def _give_up(self, event: LoggedEvent, attempt: Attempt, why: str) -> None:
        DELIVERIES.labels("refused" if attempt.outcome is Outcome.REFUSED else "given_up").inc()
        log.warning(
            "endpoint %d (%s): event %d given up (%s): %s",
            self.endpoint.id,
            self.endpoint.host,
            event.position,
            why,
            attempt.error,
        )

    # -- the endpoint's state --------------------------------------------------------------------------------------
    async def _write_health(self, force: bool) -> None:
        async with self._health_lock:
            if self.disabled or not (force or self.health.due()):
                return
            failing_too_long = (
                self.health.failing
                and self.health.failing_since is not None
                and (_now() - self.health.failing_since).total_seconds() > self.config.disable_after_seconds
            )
            if failing_too_long:
                seconds = self.config.disable_after_seconds
                await self._disable(f"failing for more than {seconds:g} s", self.health.last_error or "failing")
                return
            h = self.health
            await self.db(
                self.store.record_health,
                self.endpoint.id,
                h.state,
                h.failing_since,
                h.last_success_at,
                h.last_failure_at,
                h.last_error,
            )
            h.written()

    async def _disable_gone(self, attempt: Attempt) -> None:
        DELIVERIES.labels("gone").inc()
        await self._disable("the endpoint answered 410 Gone", attempt.error)

    async def _disable(self, reason: str, error: str) -> None:
        if self.disabled:
            return
        self.disabled = True
        await self.db(self.store.disable, self.endpoint.id, reason, error)
        log.warning("endpoint %d (%s): disabled: %s", self.endpoint.id, self.endpoint.host, reason)
