"""Which endpoints this dispatcher process delivers: leases in ``webhook_endpoints``, one task per endpoint held.

Every :attr:`DispatcherConfig.renew_seconds` (a third of ``WEBHOOK_LEASE_SECONDS``) one statement renews this
process's leases and claims the enabled, not disabled endpoints whose lease is free or expired
(``lease_owner``/``lease_until``, the database's clock). An endpoint it holds gets an :class:`EndpointWorker` task;
one it no longer holds (taken over after this process stalled past its lease, disabled, or no longer enabled) has
its task cancelled. Several replicas share the endpoints this way; the one that comes first claims what is free, and
an endpoint changes hands only when its lease is given back or runs out. On SIGTERM the process cancels its tasks and
gives its leases back, so another replica (or its own restart) takes over at once; a SIGKILLed process's endpoints are
taken over when its leases expire. A page that was being delivered then is delivered again by the next holder (its
position had not moved): at least once, same ``webhook-id``.

If the database does not answer a lease round, the tasks go on until the leases this process last renewed would
have expired, and are cancelled then: by that time another replica may hold them.

A single watcher reads the log's head (``event_sequence.last_id``) every ``WEBHOOK_POLL_INTERVAL_MS`` and wakes every
task when it moved; idle endpoints cost nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from chat_common.tenancy.tokens import TokenSealer
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.delivery import Sender
from webhook_dispatcher.endpoint_worker import EndpointWorker
from webhook_dispatcher.metrics import BACKLOG_AGE_SECONDS, BACKLOG_EVENTS, ENDPOINTS, LEASED_ENDPOINTS
from webhook_dispatcher.store import Endpoint, Store

log = logging.getLogger(__name__)

BACKLOG_SAMPLE_SECONDS = 10.0  # how often the backlog gauges are sampled (a few reads per endpoint)


class Dispatcher:
    """The process's endpoints, their tasks, and the head watcher (module docstring)."""

    def __init__(
        self,
        config: DispatcherConfig,
        store: Store,
        sealer: TokenSealer | None,
        executor: ThreadPoolExecutor,
        sender: Sender | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.sealer = sealer
        self.executor = executor
        self.sender = sender or Sender(
            config.egress, config.timeout_seconds, config.max_response_bytes, config.max_in_flight
        )
        self.workers: dict[int, tuple[EndpointWorker, asyncio.Task]] = {}
        self.renewed_at: float | None = None  # monotonic time of the last lease round the database answered
        self._sampled_at = 0.0

    async def db(self, call: Any, *args: Any) -> Any:
        """Run a blocking :class:`Store` call on the dispatcher's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(call, *args))

    def ready(self) -> bool:
        """Whether the last lease round answered within a lease's time (the readiness probe)."""
        return self.renewed_at is not None and time.monotonic() - self.renewed_at < self.config.lease_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Hold and deliver endpoints until ``stop`` is set; then cancel the tasks and give the leases back."""
        watcher = asyncio.create_task(self._watch_head(stop))
        try:
            while not stop.is_set():
                await self._lease_round()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.renew_seconds)
        finally:
            watcher.cancel()
            await self._stop_all()
            try:
                await self.db(self.store.release)
            except SQLAlchemyError as exc:
                log.warning("could not give the leases back (they expire by themselves): %s", type(exc).__name__)
            await self.sender.close()

    async def _lease_round(self) -> None:
        try:
            endpoints: list[Endpoint] = await self.db(self.store.claim, self.config.lease_seconds)
        except SQLAlchemyError as exc:
            log.warning("lease round failed: %s", type(exc).__name__)
            if self.renewed_at is not None and time.monotonic() - self.renewed_at >= self.config.lease_seconds:
                await self._stop_all()  # the leases have run out: another process may deliver them now
            return
        self.renewed_at = time.monotonic()
        held = {endpoint.id: endpoint for endpoint in endpoints}
        for endpoint_id in [i for i in self.workers if i not in held]:
            log.info("endpoint %d: no longer this process's (lease lost or disabled)", endpoint_id)
            await self._stop(endpoint_id)
        started = False
        for endpoint in endpoints:
            running = self.workers.get(endpoint.id)
            if running is not None and not running[1].done():
                running[0].refresh(endpoint)
                continue
            worker = EndpointWorker(endpoint, self.store, self.sender, self.sealer, self.config, self.db)
            task = asyncio.create_task(worker.run(), name=f"webhook-endpoint-{endpoint.id}")
            self.workers[endpoint.id] = (worker, task)
            started = True
            log.info("endpoint %d (%s): delivering from position %d", endpoint.id, endpoint.host, endpoint.position)
        LEASED_ENDPOINTS.set(len(self.workers))
        if started or time.monotonic() - self._sampled_at >= BACKLOG_SAMPLE_SECONDS:
            self._sampled_at = time.monotonic()
            await self._sample_backlog(endpoints)

    async def _sample_backlog(self, endpoints: list[Endpoint]) -> None:
        try:
            head = await self.db(self.store.head)
            for endpoint in endpoints:
                worker = self.workers[endpoint.id][0]
                held, oldest = await self.db(self.store.backlog, endpoint, worker.position)
                label = str(endpoint.id)
                BACKLOG_EVENTS.labels(label).set(max(0, head - worker.position) + held)
                age = 0.0 if oldest is None else (datetime.datetime.now(datetime.UTC) - oldest).total_seconds()
                BACKLOG_AGE_SECONDS.labels(label).set(max(0.0, age))
            for state, count in (await self.db(self.store.count_by_state)).items():
                ENDPOINTS.labels(state).set(count)
        except SQLAlchemyError as exc:
            log.warning("backlog sample failed: %s", type(exc).__name__)

    async def _watch_head(self, stop: asyncio.Event) -> None:
        seen = -1
        while not stop.is_set():
            try:
                head = await self.db(self.store.head)
            except SQLAlchemyError:
                head = seen
            if head != seen:
                seen = head
                for worker, _ in self.workers.values():
                    worker.wake()
            await asyncio.sleep(self.config.poll_interval_seconds)

    async def _stop(self, endpoint_id: int) -> None:
        worker_task = self.workers.pop(endpoint_id, None)
        if worker_task is None:
            return
        task = worker_task[1]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for gauge in (BACKLOG_EVENTS, BACKLOG_AGE_SECONDS):
            with contextlib.suppress(KeyError):
                gauge.remove(str(endpoint_id))

    async def _stop_all(self) -> None:
        for endpoint_id in list(self.workers):
            await self._stop(endpoint_id)
        LEASED_ENDPOINTS.set(0)
