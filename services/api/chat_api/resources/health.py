"""``/healthz`` (liveness), ``/readyz`` (readiness), ``/status`` (dependencies) and ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from chat_api.metrics_buffer import BUFFER
from chat_common.metrics import multiprocess_dir

log = logging.getLogger(__name__)


@dataclass
class ProcessState:
    """What the lifespan says about this process: started serving, or draining before it exits."""

    started: bool = False
    draining: bool = False


class HealthResource:
    """Liveness: the process answers."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        resp.media = {"status": "ok"}


class ReadinessResource:
    """Readiness: this process can serve — it has started and is not shutting down.

    Deliberately not "every shared dependency is up": when Redis, RabbitMQ or MySQL is down, every API pod is
    equally affected, and taking all of them out of the Service would turn a partial outage (reads without the
    broker, creates without the database) into a total one. Such faults answer 503 with ``Retry-After`` per
    request; ``/status`` shows them (docs/operations: probes).
    """

    def __init__(self, state: ProcessState) -> None:
        self.state = state

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        ready = self.state.started and not self.state.draining
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else ("draining" if self.state.draining else "starting")}


# Check results that are not a fault: up, numbering open, no dead letters, dead letters parked for a human (the
# ChatDeadLetterQueueNotEmpty alert's business, not an outage), and queues not read yet (the broker's own check
# tells whether it is down).
HEALTHY = frozenset({"ok", "open", "empty", "holding", "unknown"})
StatusCheck = Callable[[], Awaitable[str | tuple[str, dict]]]


class StatusResource:
    """Operators' view of the shared dependencies, numbering and the queues: 200 when nothing is at fault, else 503.

    A check answers its state, or its state and a detail object (shown under ``details``).
    """

    def __init__(self, checks: dict[str, StatusCheck]) -> None:
        self.checks = checks

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        async def run(name: str, check: StatusCheck) -> str | tuple[str, dict]:
            try:
                return await asyncio.wait_for(check(), 2)
            except Exception as exc:  # a status page reports failures, it never raises them
                log.info("status check %s failed: %s", name, exc.__class__.__name__)
                return "unavailable"

        names = list(self.checks)
        answers = dict(zip(names, await asyncio.gather(*(run(n, self.checks[n]) for n in names)), strict=True))
        results = {name: answer[0] if isinstance(answer, tuple) else answer for name, answer in answers.items()}
        details = {name: answer[1] for name, answer in answers.items() if isinstance(answer, tuple)}
        up = all(value in HEALTHY for value in results.values())
        resp.status = falcon.HTTP_200 if up else falcon.HTTP_503
        resp.media = {"status": "ok" if up else "degraded", "checks": results}
        if details:
            resp.media["details"] = details


class MetricsResource:
    """Prometheus exposition; under gunicorn, aggregated across every worker process."""

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        BUFFER.flush()  # this process's latest; the other workers' are at most a second old
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = await asyncio.to_thread(exposition)  # reads every worker's metric files: off the loop


def exposition() -> bytes:
    """The metrics of this process, or of every worker process under gunicorn."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return generate_latest(registry)
