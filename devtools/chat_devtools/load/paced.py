"""Open-loop timing: POSTs at a fixed rate whatever the answers, each answer kept with its number and time.

The paced client keeps, for every 201, the number the API answered and the wall-clock time of the answer, which
the end-to-end scenarios compare with the row's ``created_at`` in MySQL (and with the moment a stream listener
saw the event).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Answer:
    """One answered request of the paced client."""

    path_index: int
    status: int
    number: int  # the number in a 201 body, else 0
    due_at: float  # when the request was due (wall clock), so queueing in the client counts as latency
    answered_at: float  # wall clock, comparable with MySQL's NOW(6) on the same machine


@dataclass
class PacedRun:
    """What the paced client did."""

    target_rps: float
    achieved_rps: float
    answers: list[Answer]
    client_cpu: float
    late: int  # requests sent more than 10 ms after they were due (every connection was busy)

    def latency_ms(self, q: float) -> float:
        """Quantile ``q`` of request latency (due time to answer), ms."""
        values = sorted(a.answered_at - a.due_at for a in self.answers)
        return 1000 * quantile(values, q) if values else 0.0


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted list."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


async def _paced(
    base_url: str, paths: list[str], body: bytes, rate: float, seconds: float, connections: int
) -> tuple[list[Answer], int]:
    url = urlsplit(base_url)
    host, port = url.hostname, url.port or 80
    requests = [
        (
            f"POST {p} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for p in paths
    ]
    tickets: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    answers: list[Answer] = []
    late = 0

    async def connection() -> None:
        nonlocal late
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (ticket := await tickets.get()) is not None:
                index, due = ticket
                if time.time() - due > 0.01:
                    late += 1
                writer.write(requests[index])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                payload = await reader.readexactly(length) if length else b""
                now = time.time()
                number = 0
                if status == 201:
                    number = next(iter(json.loads(payload).values()))
                answers.append(Answer(index, status, number, due, now))
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    total = int(rate * seconds)
    start_wall, start = time.time(), time.monotonic()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tickets.put_nowait((i % len(requests), start_wall + (due - start)))
    for _ in workers:
        tickets.put_nowait(None)
    await asyncio.gather(*workers)
    return answers, late


def paced_posts(
    base_url: str, paths: list[str], body: str, *, rate: float, seconds: float, connections: int = 64
) -> PacedRun:
    """POST at ``rate`` requests/s for ``seconds`` over a pool of keep-alive connections (open loop)."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    answers, late = asyncio.run(_paced(base_url, paths, body.encode(), rate, seconds, connections))
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return PacedRun(rate, len(answers) / elapsed, answers, cpu / elapsed, late)
