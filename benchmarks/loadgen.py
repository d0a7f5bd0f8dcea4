"""Load generators on loopback: wrk for closed-loop throughput, a paced asyncio client for end-to-end timing.

wrk (C, one epoll thread) costs the least CPU per request on a machine the server shares; every run also
records the CPU wrk itself used, so a scenario where the client became the bottleneck shows it.
The paced client sends at a fixed rate whatever the answers (open loop) and keeps, for every 201, the number
the API answered and the wall-clock time of the answer, which the end-to-end scenario compares with the
row's ``created_at`` in MySQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

WRK_SCRIPT = Path(__file__).with_name("wrk_script.lua")


@dataclass
class HttpResult:
    """One wrk run: throughput, latency percentiles (ms), errors, and what the client itself cost."""

    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    non_2xx: int
    client_cpu: float  # cores wrk used on average (1.0 = one core busy all the time)

    def as_dict(self) -> dict:
        """Rounded for the JSON file."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def require_wrk() -> str:
    """Path of wrk; `make bench` installs it from Debian's `wrk` package when missing."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk not found: `sudo apt-get install -y wrk` (make bench does this for you)")
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(
    base_url: str,
    paths: list[str],
    *,
    connections: int,
    seconds: float,
    method: str = "GET",
    body: str = "",
    timeout_s: float = 10,
) -> HttpResult:
    """Run wrk with ``connections`` keep-alive connections for ``seconds``; requests spread over ``paths``."""
    argv = [
        require_wrk(),
        "-t1",  # one client thread: on 2 cores every extra client thread is taken from the server
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        f"--timeout={timeout_s:.0f}s",
        "-s",
        str(WRK_SCRIPT),
        base_url,
        "--",
        method,
        body,
        *paths,
    ]
    cpu_before = _children_cpu()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    cpu = _children_cpu() - cpu_before
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    elapsed = raw["duration_us"] / 1e6
    socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return HttpResult(
        connections=connections,
        seconds=elapsed,
        requests=raw["requests"],
        rps=raw["requests"] / elapsed,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=socket_errors + raw["status_errors"],
        non_2xx=raw["status_errors"],
        client_cpu=cpu / elapsed,
    )


# -- paced (open-loop) client ----------------------------------------------------------------------------------
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


def cpu_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))
