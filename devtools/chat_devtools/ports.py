"""Free TCP ports on loopback, for every private process, proxy and system that tests and benchmarks start.

Ports are chosen *below* the kernel's ephemeral range (``net.ipv4.ip_local_port_range``, 32768-60999 by default), at
random: a port the kernel handed out with ``bind(0)`` sits in that range, where any outgoing connection (a pooled
MySQL or AMQP connection of another test session, say) may take the same local port a moment later and hold it for
minutes — a server then fails to bind with EADDRINUSE (seen here: a shared test system that never came up). Below
the range only listeners compete, and each candidate is checked by binding it. A port found free may still be taken
by another session before its server binds it; that race is rare, and each caller fails loudly when it happens.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000  # below: well-known and registered services (RabbitMQ's 5672, epmd's 4369, Prometheus's 9090...)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(below: int | None = None, attempts: int = 500) -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range (and below ``below`` when given)."""
    high = min(_ephemeral_low(), below or 65536) - 1
    if high > LOWEST:
        for _ in range(attempts):
            port = random.randint(LOWEST, high)
            if _bindable(port):
                return port
    with socket.socket() as sock:  # a machine whose ephemeral range leaves no room: the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_with_bus(offset: int = 10000, attempts: int = 200) -> int:
    """A free port whose partner ``port + offset`` is free too and below 65536 (a Redis Cluster node's bus)."""
    for _ in range(attempts):
        port = free_port(below=_ephemeral_low() - offset)
        if port + offset > 65535:
            continue
        if _bindable(port + offset):
            return port
    raise RuntimeError(f"no free pair of ports {offset} apart")


def closed_port() -> int:
    """A local port nothing listens on (for "connection refused" cases): a free port, left unbound."""
    return free_port()
