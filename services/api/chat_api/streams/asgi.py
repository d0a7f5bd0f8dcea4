"""The ASGI side of streams: the Falcon app that lets a stream abort its own connection.

A client that stops reading leaves the server's ``send`` waiting for the socket, and nothing in ASGI lets an app
abandon a response midway. So for stream routes the app keeps the server's ``send`` callable in the scope
(:data:`SEND_KEY`), and a stream that must be cut off (:func:`aborter`) aborts the connection's transport: the
pending ``send`` returns, the response ends, and the client reconnects with the last id it received. Under a
server whose ``send`` does not expose its transport, the request's task is cancelled instead (the server logs it).

The app also carries the process's hub (:attr:`StreamingApp.streams`): the server it runs in ends the streams when
it starts shutting down (``chat_api.worker``), and :class:`StreamsLifespan` closes the hub at the lifespan shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import falcon.asgi

if TYPE_CHECKING:
    from chat_api.streams.hub import StreamHub

SEND_KEY = "chat_api.send"
DISCONNECT_KEY = "chat_api.on_disconnect"
STREAM_SUFFIX = "/messages/stream"


class StreamingApp(falcon.asgi.App):
    """Falcon's ASGI app, plus, for stream requests, the server's ``send`` and disconnect callbacks in the scope.

    Falcon watches a streaming response's ``receive`` for the client's disconnect but acts on it only at the next
    write; a stream waiting for events would hold its slot (and its limits) until its next heartbeat. The callbacks
    in :data:`DISCONNECT_KEY` run as soon as the server reports the disconnect.

    ``streams`` is the hub of this process (None: no streams), given by ``create_app``; the server reads it here.
    """

    streams: StreamHub | None = None

    async def __call__(self, scope, receive, send) -> None:  # noqa: D102
        if scope["type"] == "http" and scope["path"].endswith(STREAM_SUFFIX):
            scope[SEND_KEY] = send
            callbacks: list[Callable[[], None]] = []
            scope[DISCONNECT_KEY] = callbacks
            inner = receive

            async def receive() -> dict:
                message = await inner()
                if message["type"] == "http.disconnect":
                    for callback in callbacks:
                        callback()
                return message

        await super().__call__(scope, receive, send)


class StreamsLifespan:
    """Falcon lifespan middleware: close the hub (end its streams, stop its ticker and its consumer) at shutdown.

    Listed after the process's other lifespan middleware, so that (Falcon runs ``process_shutdown`` in reverse
    order) the streams end before the connections their reads use are closed.
    """

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    async def process_shutdown(self, scope: dict, event: dict) -> None:  # noqa: D102
        await self.hub.close()  # usually ended already, when the server began shutting down (chat_api.worker)


def on_disconnect(scope: dict, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the client of this stream request goes away (no-op outside StreamingApp)."""
    callbacks = scope.get(DISCONNECT_KEY)
    if callbacks is not None:
        callbacks.append(callback)


def aborter(scope: dict) -> Callable[[], None]:
    """How to cut one stream's connection: abort uvicorn's transport, else cancel the request's task."""
    send = scope.get(SEND_KEY)
    # uvicorn's ``send`` is a bound method of its request cycle, which holds the connection's transport: no public
    # API gives an app its connection (ASGI has none), so this stays; tests/integration/test_library_internals.py
    # fails when a uvicorn version changes it (pinned 0.54.0).
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport.abort
    task = asyncio.current_task()
    return (lambda: task.cancel()) if task is not None else (lambda: None)


__all__ = ["DISCONNECT_KEY", "SEND_KEY", "StreamingApp", "StreamsLifespan", "aborter", "on_disconnect"]
