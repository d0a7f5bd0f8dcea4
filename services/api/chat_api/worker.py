"""The gunicorn worker class of the API: uvicorn on uvloop with the httptools parser; every log line redacted.

The access log is off unless gunicorn's ``accesslog`` is set (``GUNICORN_ACCESS_LOG``, e.g. ``-``): it costs
throughput. When on, its lines (like every other line of the worker) carry no token — the path's token segment is
``tok:`` and a digest prefix (:mod:`chat_common.redaction`).

The parser runs in :class:`chat_api.protocol.LimitedHttpToolsProtocol`: header size, count and read-time limits and a
connection cap per process, configured from the environment (``API_*``, :class:`chat_common.config.Settings`).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from chat_api.protocol import LimitedHttpToolsProtocol
from chat_api.streams import StreamHub
from chat_common import redaction
from chat_common.config import Settings


class StreamEndingServer(Server):
    """uvicorn's server, ending the live streams first when it shuts down.

    uvicorn waits for open responses to finish before it sends the lifespan shutdown; a live stream never finishes
    by itself, so without this a graceful stop would hold every stream until gunicorn's ``graceful_timeout`` and
    then kill them. Ending them first lets each response close cleanly, and the clients reconnect elsewhere.
    ``streams`` is the app's hub (``StreamingApp.streams``; None: the app has no streams).
    """

    def __init__(self, config: Config, streams: StreamHub | None = None) -> None:
        super().__init__(config=config)
        self.streams = streams

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:  # noqa: D102
        for server in self.servers:  # no new connection (hence no new stream) while the streams end
            server.close()
        if self.streams is not None:
            await self.streams.end_all_and_wait()
        await super().shutdown(sockets)


class ApiWorker(UvicornWorker):
    """One process, one event loop: uvloop and httptools are required (pinned), never silently swapped."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on", "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        # UvicornWorker builds its uvicorn Config from CONFIG_KWARGS last, so these win over gunicorn's keepalive.
        self.CONFIG_KWARGS = {
            **self.CONFIG_KWARGS,
            "http": LimitedHttpToolsProtocol.configured(settings),
            "timeout_keep_alive": settings.api_keepalive_seconds,
        }
        super().__init__(*args, **kwargs)
        if self.cfg.accesslog:
            # uvicorn's access log only when gunicorn's is configured; CONFIG_KWARGS turned it off, and uvicorn's
            # Config then emptied its logger: give it gunicorn's access handlers back (what UvicornWorker does).
            self.config.access_log = True
            access = logging.getLogger("uvicorn.access")
            access.handlers = self.log.access_log.handlers
            access.setLevel(self.log.access_log.level)
        # The handlers uvicorn's and gunicorn's loggers write through (the app's root handler gets its filter
        # from chat_common.logs.configure).
        redaction.install([*self.log.error_log.handlers, *self.log.access_log.handlers])

    async def _serve(self) -> None:
        # UvicornWorker._serve with the server class above: uvicorn-worker has no public way to choose the server
        # class (nor uvicorn a hook between "stop accepting" and "wait for the open responses"). Kept, and held by
        # tests/unit/test_library_internals.py, which fails when the pinned version's _serve changes.
        self.config.app = self.wsgi
        server = StreamEndingServer(config=self.config, streams=getattr(self.wsgi, "streams", None))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
