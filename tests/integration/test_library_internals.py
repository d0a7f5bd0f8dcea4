"""A stream cuts its own connection through the server's transport: held against the real uvicorn (pinned 0.54.0).

ASGI has no way for an app to abandon a response midway, so ``chat_api.streams.asgi.aborter`` reaches the
transport through the ``send`` uvicorn gives the app (a bound method of the request cycle, which holds
``transport``). This test serves a response with the API's protocol and aborts it after its first chunk: it fails
if a uvicorn version stops exposing the transport that way (the aborter would then cancel the task instead, and
the test sees no abort), or if aborting no longer cuts the connection.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.config import Config
from uvicorn.server import Server

from chat_api.protocol import LimitedHttpToolsProtocol
from chat_api.streams.asgi import SEND_KEY, aborter
from chat_common.config import Settings


async def test_a_stream_aborts_its_connection_through_uvicorns_transport():
    aborts = []

    async def app(scope, receive, send):
        scope[SEND_KEY] = send
        abort = aborter(scope)
        aborts.append(abort)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        abort()
        await send({"type": "http.response.body", "body": b"never", "more_body": False})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = Config(app, http=LimitedHttpToolsProtocol.configured(Settings()), lifespan="off", log_level="warning")
    server = Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 5)  # to EOF: the connection was cut
        writer.close()
    finally:
        server.should_exit = True
        await serving
    assert aborts and getattr(aborts[0], "__name__", None) == "abort"  # the transport's, not the task-cancel fallback
    assert b"first" in received and b"never" not in received
    assert not received.endswith(b"0\r\n\r\n")  # the chunked response was never terminated
