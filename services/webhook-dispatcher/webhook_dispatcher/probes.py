"""The dispatcher's HTTP side: ``/healthz`` (the event loop answers), ``/readyz`` (its last lease round reached the
database in time) and ``/metrics`` (Prometheus), on ``WEBHOOK_DISPATCHER_PORT``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def probe_app(ready: Callable[[], bool]) -> web.Application:
    """The probes' routes; ``ready`` tells whether the dispatcher can do its work now."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: the database has not answered a lease round lately\n")

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_probes(port: int, ready: Callable[[], bool]) -> web.AppRunner | None:
    """Start the probes on ``port`` (all interfaces: the kubelet and Prometheus reach the pod's IP); 0: none."""
    if not port:
        return None
    runner = web.AppRunner(probe_app(ready), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # a pod's probe port: the kubelet and Prometheus reach its IP
    return runner
