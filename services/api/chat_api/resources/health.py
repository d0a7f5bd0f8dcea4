"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from chat_common.metrics import multiprocess_dir

log = logging.getLogger(__name__)


class HealthResource:
    """Liveness: the process answers."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        resp.media = {"status": "ok"}


class ReadinessResource:
    """Readiness: each dependency the API needs answers."""

    def __init__(self, checks: dict[str, Callable[[], bool]]) -> None:
        self.checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = "ok" if check() else "unavailable"
            except Exception as exc:  # a readiness probe reports failures, it never raises them
                log.info("readiness check %s failed: %s", name, exc)
                results[name] = "unavailable"
        ready = all(v == "ok" for v in results.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not ready", "checks": results}


class MetricsResource:
    """Prometheus exposition; under gunicorn, aggregated across every worker process."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:  # noqa: D102
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            from prometheus_client import REGISTRY as registry
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(registry)
