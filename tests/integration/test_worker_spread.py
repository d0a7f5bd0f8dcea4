"""Keep-alive connections spread over the API's worker processes: no worker ends up holding most clients.

With one shared listening socket, whichever worker wakes first accepts a whole burst of connections (measured:
64 of 64). Each worker listens on a socket of its own (SO_REUSEPORT, services/api/gunicorn.conf.py), so the
kernel spreads them.
"""

from __future__ import annotations

import socket
import threading
import time

import psutil

from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from tests.conftest import LOG_ROOT

CONNECTIONS = 48


def _held_by_each_worker(system: System) -> dict[int, int]:
    port = system.port
    workers = psutil.Process(system.api.pid).children()
    return {
        w.pid: sum(
            1 for c in w.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == "ESTABLISHED"
        )
        for w in workers
    }


def test_connections_spread_over_workers():
    ns = Namespace.create("spread")
    system = System(ns, LOG_ROOT / ns.name, api_workers=2).start()
    clients: list[socket.socket] = []
    lock = threading.Lock()

    def connect() -> None:
        sock = socket.create_connection(("127.0.0.1", system.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with lock:
            clients.append(sock)

    try:
        # Both workers listening (a worker that is still starting has no socket yet, and gets nothing).
        deadline = time.monotonic() + 60
        while system.api.log_path.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.1)
        threads = [threading.Thread(target=connect) for _ in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        held = _held_by_each_worker(system)
        assert len(held) == 2 and sum(held.values()) == CONNECTIONS, held
        assert min(held.values()) >= CONNECTIONS // 4, f"one worker holds most connections: {held}"
    finally:
        for sock in clients:
            sock.close()
        system.stop()
        ns.destroy()
