"""The ASGI side of streams: the Falcon app that lets a stream abort its own connection.

A client that stops reading leaves the server's ``send`` waiting for the socket, and nothing in ASGI lets an app
abandon a response midway. So for stream routes the app keeps the server's ``send`` callable in the scope
(:data:`SEND_KEY`), and a stream that must be cut off (:func:`aborter`) aborts the connection's transport: the
pending ``send`` returns, the response ends, and the client reconnects with the last id it received. Under a
server whose ``send`` does not expose its transport, the request's task is cancelled instead (the server logs it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import falcon.asgi

SEND_KEY = "chat_api.send"
DISCONNECT_KEY = "chat_api.on_disconnect"
STREAM_SUFFIX = "/messages/stream"


class StreamingApp(falcon.asgi.App):
    """Falcon's ASGI app, plus, for stream requests, the server's ``send`` and disconnect callbacks in the scope.

    Falcon watches a streaming response's ``receive`` for the client's disconnect but acts on it only at the next
    write; a stream waiting for events would hold its slot (and its limits) until its next heartbeat. The callbacks
    in :data:`DISCONNECT_KEY` run as soon as the server reports the disconnect.
    """

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


def on_disconnect(scope: dict, callback: Callable[[], None]) -> None:
    """Run ``callback`` when the client of this stream request goes away (no-op outside StreamingApp)."""
    callbacks = scope.get(DISCONNECT_KEY)
    if callbacks is not None:
        callbacks.append(callback)


def aborter(scope: dict) -> Callable[[], None]:
    """How to cut one stream's connection: abort uvicorn's transport, else cancel the request's task."""
    send = scope.get(SEND_KEY)
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        return transport.abort
    task = asyncio.current_task()
    return (lambda: task.cancel()) if task is not None else (lambda: None)


__all__ = ["DISCONNECT_KEY", "SEND_KEY", "StreamingApp", "aborter", "on_disconnect"]
