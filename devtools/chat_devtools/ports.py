"""Free TCP ports on loopback, for every private process, proxy and system that tests and benchmarks start.

A port found free may be taken by someone else before its server binds it; on a machine shared by a handful of
test sessions that race is rare enough, and each caller fails loudly (the server does not start) when it happens.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_with_bus(offset: int = 10000, attempts: int = 200) -> int:
    """A free port whose partner ``port + offset`` is free too and below 65536 (a Redis Cluster node's bus)."""
    for _ in range(attempts):
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free pair of ports {offset} apart")
