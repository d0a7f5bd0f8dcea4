"""The gunicorn worker class of the API: uvicorn on uvloop with the httptools parser, and no access log."""

from __future__ import annotations

import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from chat_api.streams import end_all_streams


class StreamEndingServer(Server):
    """uvicorn's server, ending the live streams first when it shuts down.

    uvicorn waits for open responses to finish before it sends the lifespan shutdown; a live stream never finishes
    by itself, so without this a graceful stop would hold every stream until gunicorn's ``graceful_timeout`` and
    then kill them. Ending them first lets each response close cleanly, and the clients reconnect elsewhere.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:  # noqa: D102
        for server in self.servers:  # no new connection (hence no new stream) while the streams end
            server.close()
        await end_all_streams()
        await super().shutdown(sockets)


class ApiWorker(UvicornWorker):
    """One process, one event loop: uvloop and httptools are required (pinned), never silently swapped."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on", "access_log": False}

    async def _serve(self) -> None:
        # UvicornWorker._serve with the server class above.
        self.config.app = self.wsgi
        server = StreamEndingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
