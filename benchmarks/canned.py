"""`python -m benchmarks.canned PORT`: an HTTP server that answers every request with the same canned 201.

It does close to nothing per request, so wrk against it shows what the load generator itself can drive on
this machine (the load generator's ceiling). Run two with the same port: SO_REUSEPORT spreads connections.
"""

from __future__ import annotations

import asyncio
import sys

BODY = b'{"message_number":1}'
RESPONSE = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Canned(asyncio.Protocol):
    """Answer each complete request (headers plus Content-Length bytes) with :data:`RESPONSE`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            marker = self.buffer.find(b"Content-Length: ", 0, end)
            if marker >= 0:
                length = int(self.buffer[marker + 16 : self.buffer.find(b"\r\n", marker)])
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            answers += 1
        if answers:
            self.transport.write(RESPONSE * answers)


async def serve(port: int) -> None:
    """Serve until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned, "127.0.0.1", port, reuse_port=True, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
