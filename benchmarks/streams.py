"""Live streams under load: idle streams per worker and their memory, delivery latency, creates beside
open streams.

The streams are held by a separate client process (``python -m benchmarks.streams hold FILE``: asyncio on uvloop,
raw HTTP/1.1), so thousands of sockets and the parsing of their events cost the benchmark process nothing and
never disturb the paced create client's timing. The holder prints one JSON line when every stream is open (or
failed), then reads until its stdin closes and prints a last JSON line with, per stream, when each message event
arrived (wall clock, comparable with the paced client's ``answered_at``).

Keys (in ``scenarios.streams``):

- ``stream_idle_connections_per_worker`` — idle streams one API worker (``GUNICORN_WORKERS=1``) held open, with
  ``api_worker_peak_rss_mb`` (VmHWM of that worker) and the RSS before; target ≥ 5,000 at ≤ 250 MB.
- ``stream_delivery_p99_ms`` — from a create's 201 to its event at a listener, at 50% of the peak create rate, beside
  ``accept_to_row_p99_ms`` of the same run; target ≤ 1,000 ms and ≤ accept→row p99 + 100 ms.
- ``create_rps_with_streams`` / ``create_rps_without_streams`` and their ratio — creates at c=64 with 1,000 open
  streams (one on each loaded chat, the rest on quiet chats of the same application) vs none; target ≥ 0.9.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

IDLE_STREAMS = int(os.environ.get("BENCH_STREAMS_IDLE", "5000"))
BUSY_STREAMS = int(os.environ.get("BENCH_STREAMS_OPEN", "1000"))
# Of those, how many listen to the chats under create load (one each by default); the rest are on quiet chats.
LOADED_LISTENERS = int(os.environ.get("BENCH_STREAMS_LOADED", "16"))
CONNECT_WAVE = 200


# -- the holder (a child process) ------------------------------------------------------------------------------
async def _hold_one(index: int, url: str, opened: list, arrivals: dict, stop: asyncio.Event) -> None:
    parts = urlsplit(url)
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n"
        writer.write(request.encode())
        head = await reader.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError) as exc:
        opened[index] = f"error: {exc.__class__.__name__}"
        return
    opened[index] = "ok" if head.startswith(b"HTTP/1.1 200") else head.split(b"\r\n", 1)[0].decode()
    if opened[index] != "ok":
        writer.close()
        return
    mine: dict[int, float] = {}
    arrivals[index] = mine
    tail = b""
    try:
        while not stop.is_set():
            data = await reader.read(65536)
            if not data:
                break
            now = time.time()
            text = tail + data
            cut = text.rfind(b"\n")
            lines, tail = text[: cut + 1], text[cut + 1 :]
            for line in lines.split(b"\n"):
                if line.startswith(b"id: "):
                    mine.setdefault(int(line[4:]), now)
    except OSError:
        pass
    opened[index] = "ended" if not stop.is_set() else opened[index]
    writer.close()


async def _hold(urls: list[str]) -> None:
    stop = asyncio.Event()
    opened: list = [None] * len(urls)
    arrivals: dict[int, dict[int, float]] = {}
    tasks = []
    for start in range(0, len(urls), CONNECT_WAVE):
        wave = [
            asyncio.create_task(_hold_one(i, urls[i], opened, arrivals, stop))
            for i in range(start, min(start + CONNECT_WAVE, len(urls)))
        ]
        tasks += wave
        while any(opened[i] is None for i in range(start, min(start + CONNECT_WAVE, len(urls)))):
            await asyncio.sleep(0.01)
    ok = sum(1 for o in opened if o == "ok")
    print(json.dumps({"opened": ok, "failed": [o for o in opened if o != "ok"][:5]}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    still_open = sum(1 for o in opened if o == "ok")
    stop.set()
    for task in tasks:
        task.cancel()
    print(json.dumps({"still_open": still_open, "arrivals": {str(k): v for k, v in arrivals.items()}}), flush=True)


def hold_main(path: str) -> None:
    """Entry point of the holder process: the stream URLs are in the JSON file ``path``."""
    import uvloop

    urls = json.loads(Path(path).read_text())
    uvloop.run(_hold(urls))


class Holder:
    """A holder process seen from the benchmark: ``open()`` returns once every stream answered."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(urls, handle)
        self.path = handle.name
        self.process: subprocess.Popen | None = None

    def open(self, timeout: float = 300) -> dict:
        root = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.streams", "hold", self.path],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the stream holder died before opening its streams")
        return json.loads(line)

    def close(self) -> dict:
        """Close the streams; what the holder saw (``still_open``, and the arrival times per stream)."""
        assert self.process is not None
        self.process.stdin.close()
        line = self.process.stdout.readline()
        self.process.wait(60)
        Path(self.path).unlink(missing_ok=True)
        return json.loads(line) if line else {"still_open": 0, "arrivals": {}}


def stream_urls(base_url: str, token: str, chats: list[int], count: int) -> list[str]:
    """``count`` stream URLs spread round-robin over ``chats`` (each starting from now)."""
    return [f"{base_url}/applications/{token}/chats/{chats[i % len(chats)]}/messages/stream" for i in range(count)]


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted values (0.0 for none)."""
    if not values:
        return 0.0
    return values[min(int(q * len(values)), len(values) - 1)]


def rss_mb(pid: int) -> float:
    """Current resident set size of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_open(stack, expected: int, timeout: float = 30) -> float:
    """Until the API reports ``expected`` open streams (its gauge); returns the count seen."""
    import requests

    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        text = requests.get(f"{stack.base_url}/metrics", timeout=5).text
        seen = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("chat_api_streams_open"))
        if seen >= expected:
            break
        time.sleep(0.5)
    return seen


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hold":
        hold_main(sys.argv[2])
    else:
        sys.exit("usage: python -m benchmarks.streams hold URLS.json")
