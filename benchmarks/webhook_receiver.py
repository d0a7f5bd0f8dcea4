"""A webhook receiver for the benchmarks: a child process that answers every POST 204 at once and records when
each event first arrived (``python -m benchmarks.webhook_receiver PORT``).

Raw HTTP/1.1 on asyncio (uvloop), keep-alive, ``Content-Length`` bodies: the receiver must cost little next to the
dispatcher it measures on a 2-core machine (a framework would put its own parsing on the same cores). It prints one
JSON line when it listens, then one per line read from its stdin, and a last one when its stdin closes: ``arrivals``
maps each ``webhook-id`` to the wall-clock time its first delivery was read (comparable with MySQL's
``committed_at`` on the same machine), ``deliveries`` counts every request (repeats included).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

_ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"


class _Receiver(asyncio.Protocol):
    def __init__(self, arrivals: dict[str, float], counts: list[int]) -> None:
        self.arrivals = arrivals
        self.counts = counts
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length, event = 0, None
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "webhook-id":
                    event = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.counts[0] += 1
            if event is not None and event not in self.arrivals:
                self.arrivals[event] = time.time()
            assert self.transport is not None
            self.transport.write(_ANSWER)


async def _serve(port: int) -> None:
    arrivals: dict[str, float] = {}
    counts = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Receiver(arrivals, counts), "127.0.0.1", port)
    print(json.dumps({"listening": port}), flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):  # a line: report so far; end of input: stop
        print(json.dumps({"deliveries": counts[0], "arrivals": arrivals}), flush=True)
    server.close()
    print(json.dumps({"deliveries": counts[0], "arrivals": arrivals}), flush=True)


class WebhookReceiver:
    """The receiver process seen from the benchmark."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> WebhookReceiver:
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.webhook_receiver", str(self.port)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if not self.process.stdout.readline():
            raise RuntimeError("the webhook receiver died before listening")
        return self

    def snapshot(self) -> dict[str, float]:
        """First arrival time per webhook-id so far."""
        assert self.process is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["arrivals"]

    def stop(self) -> dict:
        """Stop it; what it saw (``deliveries``, and ``arrivals``: first arrival time per webhook-id)."""
        assert self.process is not None
        self.process.stdin.close()
        line = self.process.stdout.readline()
        self.process.wait(60)
        return json.loads(line) if line else {"deliveries": 0, "arrivals": {}}


if __name__ == "__main__":
    import uvloop

    uvloop.run(_serve(int(sys.argv[1])))
