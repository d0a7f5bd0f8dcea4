"""Closed-loop throughput with wrk: keep-alive connections sending as fast as the server answers.

wrk (C, one epoll thread) costs the least CPU per request on a machine the server shares; every run also
records the CPU wrk itself used, so a scenario where the client became the bottleneck shows it. The Lua script
beside this module spreads requests over several paths and prints the result as one JSON line.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

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
