"""The hostile client of ``test_noisy_neighbour.py``: a process of its own, at the machine's lowest CPU priority.

Run as ``python hostile_client.py BASE_URL TOKEN CHAT KINDS [RATE]`` (``KINDS`` comma-separated, of :data:`KINDS`;
``RATE``: at most that many attack steps a second across every attack, 0 or absent for as fast as answered). It
starts its attacks, writes ``ready`` on stdout, floods until its stdin closes, then writes what the server answered
(a JSON object: counts per attack and answer, and its own CPU seconds) and exits.

Standard library only, and started as a script rather than with ``multiprocessing``: a spawned child imports the
test module (pytest, SQLAlchemy, requests) before any code of its own runs, a second or so of CPU at the test's
priority at the start of every hostile window; this process is at the lowest priority from its first instruction
(the test sets it between fork and exec, :func:`lowest_priority`).
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import socket
import string
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

KINDS = ("random_token", "deep_page", "search", "create", "huge_header", "slowloris", "stream")
AUTOGROUP = Path("/proc/self/autogroup")


def lowest_priority() -> None:
    """Put this process below everything else on the machine's CPUs, the server's processes included.

    On a real deployment the attacker's own CPU is not the server's; here both share two cores, so the load generator
    must take only what the server leaves. ``nice 19`` alone does not do it: with the autogroup scheduler
    (``/proc/sys/kernel/sched_autogroup_enabled``, ``man 7 sched``) each session gets an equal share of the CPU
    whatever its processes' nice values, and the test's session holds the API's processes while MariaDB, Redis and
    RabbitMQ run in sessions of their own: a nice-19 process in the test's session takes that session's full share
    from them whenever the API waits. So: a session of its own, that session's group at the lowest weight (nice 19),
    and the process in ``SCHED_IDLE`` (the lowest weight there is). Where the group's weight cannot be set,
    ``SCHED_IDLE`` still holds. The server's cost stays real: every hostile request is still sent and served (the
    test reports their rate).
    """
    os.setsid()
    with contextlib.suppress(OSError):
        AUTOGROUP.write_text("19")
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class Pacer:
    """At most ``rate`` attack steps a second across every thread (0: as fast as the server answers)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        """Sleep until this thread's turn: the turns are spaced ``1 / rate`` apart, whoever takes them."""
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            turn = max(self.next, now)
            self.next = turn + self.interval
        time.sleep(max(0.0, turn - now))


def _loop(stopping: threading.Event, pacer: Pacer, work) -> None:
    while not stopping.is_set():
        pacer.wait()
        try:
            work()
        except (http.client.HTTPException, OSError):
            time.sleep(0.01)


def flood(
    base_url: str, token: str, chat: int, kinds: tuple[str, ...], stopping: threading.Event, rate: float = 0.0
) -> dict[str, int]:
    """Every attack of ``kinds`` in threads of their own, ``rate`` steps a second at most in all (0: unbounded),
    until ``stopping`` is set; what the server answered.

    Writes ``ready`` on stdout once every attack runs."""
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    tenant = f"/applications/{token}"
    held: list[socket.socket] = []
    tally: collections.Counter[str] = collections.Counter()
    tally_lock = threading.Lock()

    def count(key: str) -> None:
        with tally_lock:
            tally[key] += 1

    def session_work(kind, make_request):
        """One thread's keep-alive connection on ``http.client`` (``requests`` costs several times its CPU per
        request: the load generator's own CPU would stand in for the server's); reconnects after an error."""
        conn: list[http.client.HTTPConnection] = []

        def work():
            if not conn:
                conn.append(http.client.HTTPConnection(host, port, timeout=30))
            try:
                resp = make_request(conn[0])
                body = resp.read()
            except (http.client.HTTPException, OSError):
                conn.pop().close()
                raise
            if resp.will_close:
                conn.pop().close()
            # Which attack drew which answer; a 503's reason too (a fault, not a refusal, is worth knowing about).
            reason = body[:60].decode(errors="replace") if resp.status == 503 else ""
            count(f"{kind}_{resp.status}{reason}")

        return work

    def get(conn, path):
        conn.request("GET", path)
        return conn.getresponse()

    def random_token(conn):
        fake = "".join(random.choices(string.ascii_letters + string.digits, k=32))
        return get(conn, f"/applications/{fake}/chats")

    def deep_page(conn):
        return get(conn, f"{tenant}/chats/{chat}/messages?page=100000&per_page=100")

    def search(conn):
        return get(conn, f"{tenant}/chats/{chat}/messages/search?query=zq")

    def create(conn):
        conn.request(
            "POST",
            f"{tenant}/chats/{chat}/messages",
            body=b'{"body": "flood"}',
            headers={"Content-Type": "application/json"},
        )
        return conn.getresponse()

    def huge_header():
        with socket.create_connection((host, port), timeout=10) as sock:
            count("huge_header")  # sent: the server answers 431 and closes mid-way, so the send itself fails
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * (8 << 20) + b"\r\n\r\n")
            sock.recv(1024)

    def slowloris():
        if len(held) >= 2_000:
            time.sleep(0.5)
            return
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        held.append(sock)
        count("slowloris")

    def stream():
        if len(held) >= 4_000:
            time.sleep(0.5)
            return
        sock = socket.create_connection((host, port), timeout=10)
        head = f"GET {tenant}/chats/{chat}/messages/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        sock.sendall(head.encode())
        status = sock.recv(64).split(b" ")[1:2]
        count(f"stream_{status[0].decode() if status else 'closed'}")
        held.append(sock)

    threads_of = {
        "random_token": [session_work("random_token", random_token) for _ in range(2)],
        "deep_page": [session_work("deep_page", deep_page) for _ in range(2)],
        "search": [session_work("search", search) for _ in range(2)],
        "create": [session_work("create", create) for _ in range(2)],
        "huge_header": [huge_header],
        "slowloris": [slowloris],
        "stream": [stream],
    }
    pacer = Pacer(rate)
    for work in [w for kind in kinds for w in threads_of[kind]]:
        threading.Thread(target=_loop, args=(stopping, pacer, work), daemon=True).start()
    print("ready", flush=True)
    stopping.wait()
    for sock in held:
        sock.close()
    with tally_lock:  # the threads are daemons that may still be in a request: counted up to here
        return dict(tally)


def main(argv: list[str]) -> None:
    base_url, token, chat, kinds = argv[1], argv[2], int(argv[3]), tuple(argv[4].split(","))
    rate = float(argv[5]) if len(argv) > 5 else 0.0
    stopping = threading.Event()

    def stop_at_eof():
        sys.stdin.read()
        stopping.set()

    threading.Thread(target=stop_at_eof, daemon=True).start()
    answers = flood(base_url, token, chat, kinds, stopping, rate)
    print(json.dumps({"answers": answers, "cpu_seconds": time.process_time()}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
