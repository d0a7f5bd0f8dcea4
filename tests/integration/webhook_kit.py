"""What the webhook tests share: real local receivers, endpoint rows, and a dispatcher run in-process or as a process.

Receivers are ``http.server`` servers on 127.0.0.1 in threads; every delivery they get is verified with the Standard
Webhooks reference library (``standardwebhooks``), never with the dispatcher's own signing code. Endpoint rows are
inserted directly (the admin REST API and the operator that manage them are another module's), their secret sealed
with ``TokenSealer.seal_for`` for ``webhook:{application_id}:{name}``, as the endpoint store seals it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy import Engine, text
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from chat_common.clients.db import make_engine
from chat_common.tenancy.tokens import TokenSealer
from chat_common.webhooks.egress import EgressPolicy
from chat_common.wire.events import EVENT_TYPES
from webhook_dispatcher.config import DispatcherConfig
from webhook_dispatcher.leases import Dispatcher
from webhook_dispatcher.signing import new_secret
from webhook_dispatcher.store import Store

LOOPBACK_ONLY = EgressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True)
SHORT_SCHEDULE = (0.3, 0.5, 1.0, 1.0, 2.0)  # seconds between attempts in tests (the default takes a day)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition", step: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# -- receivers --------------------------------------------------------------------------------------------------------
@dataclass
class Received:
    """One delivery as a receiver got it."""

    message_id: str
    timestamp: str
    signature: str
    body: bytes
    at: float  # time.time() on arrival
    path: str

    @property
    def payload(self) -> dict:
        return json.loads(self.body)

    @property
    def event_id(self) -> int:
        return int(self.message_id.removeprefix("evt_"))


Answer = tuple[int, dict[str, str], bytes, float]  # status, headers, body, seconds to wait before answering


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1; ``answer`` decides each response (default: 204 at once).

    ``secrets``: every delivery must verify with each of them (standardwebhooks); failures are kept in ``unverified``.
    """

    secrets: Iterable[str] = ()
    answer: Callable[[Received], Answer] | None = None
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    sockets: set = field(default_factory=set)
    connections: int = 0  # accepted, with or without a request

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        """The endpoint's URL: with a query string, as tenants' often carry one (logs must not show it)."""
        return f"http://127.0.0.1:{self.port}/hooks/chat?key=query-secret"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.sockets.add(self.connection)
                    receiver.connections += 1

            def finish(self) -> None:
                with receiver.lock:
                    receiver.sockets.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                if receiver.server is None:  # stopped: a kept-alive connection gets no answer either
                    self.close_connection = True
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                got = Received(
                    self.headers.get("webhook-id", ""),
                    self.headers.get("webhook-timestamp", ""),
                    self.headers.get("webhook-signature", ""),
                    body,
                    time.time(),
                    self.path,
                )
                receiver._verify(got, dict(self.headers))
                with receiver.lock:
                    receiver.received.append(got)
                status, headers, answer_body, delay = (receiver.answer or (lambda _: (204, {}, b"", 0.0)))(got)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer_body)))
                    self.end_headers()
                    self.wfile.write(answer_body)
                except OSError:  # the dispatcher hung up (a body past its limit, its timeout)
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # socketserver's 5 drops concurrent connects: a 1 s SYN retry, not ours

            def handle_error(self, request, client_address) -> None:
                pass  # the dispatcher hung up or was killed: nothing to report

        server = Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True, name=f"receiver-{self.port}").start()

    def stop(self) -> None:
        """Close the port: connections are refused until :meth:`start`."""
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            server.server_close()
            with self.lock:
                for connection in list(self.sockets):  # kept-alive connections too: the receiver is down
                    with contextlib.suppress(OSError):
                        connection.shutdown(socket.SHUT_RDWR)

    def _verify(self, got: Received, headers: dict[str, str]) -> None:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(got.body, headers)
            except WebhookVerificationError as exc:
                with self.lock:
                    self.unverified.append(f"{got.message_id}: {exc}")

    def ids(self) -> list[int]:
        with self.lock:
            return [r.event_id for r in self.received]

    def first_arrivals(self) -> list[Received]:
        """Each webhook-id's first delivery, in arrival order."""
        seen, out = set(), []
        with self.lock:
            for r in self.received:
                if r.message_id not in seen:
                    seen.add(r.message_id)
                    out.append(r)
        return out


def assert_chat_order(arrivals: list[Received]) -> None:
    """Within each chat, events arrived in id order."""
    per_chat: dict[int, list[int]] = {}
    for r in arrivals:
        per_chat.setdefault(r.payload["data"]["chat_number"], []).append(r.event_id)
    for chat, ids in per_chat.items():
        assert ids == sorted(ids), f"chat {chat} out of order: {ids}"


# -- endpoints --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointRow:
    id: int
    secret: str


def add_endpoint(
    engine: Engine,
    sealing_key: str,
    app_id: int,
    url: str,
    *,
    name: str = "main",
    event_types: Iterable[str] = EVENT_TYPES,
    secret: str | None = None,
    previous_secret: str | None = None,
    previous_expires_at: datetime.datetime | None = None,
    position: int = 0,
) -> EndpointRow:
    """An endpoint row as the endpoint store writes one (its secret sealed for ``webhook:{app}:{name}``)."""
    sealer = TokenSealer(sealing_key)
    context = f"webhook:{app_id}:{name}"
    secret = secret or new_secret()
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "INSERT INTO webhook_endpoints (application_id, name, url, event_types, secret_sealed,"
                " previous_secret_sealed, previous_secret_expires_at, position)"
                " VALUES (:app, :name, :url, :types, :sealed, :previous, :expires, :position)"
            ),
            {
                "app": app_id,
                "name": name,
                "url": url,
                "types": ",".join(event_types),
                "sealed": sealer.seal_for(secret, context),
                "previous": None if previous_secret is None else sealer.seal_for(previous_secret, context),
                "expires": None if previous_expires_at is None else previous_expires_at.replace(tzinfo=None),
                "position": position,
            },
        )
    return EndpointRow(int(result.lastrowid), secret)


def endpoint_row(engine: Engine, endpoint_id: int) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM webhook_endpoints WHERE id = :e"), {"e": endpoint_id}).mappings().one()
        )


def held_rows(engine: Engine, endpoint_id: int) -> list[dict]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text("SELECT * FROM webhook_held WHERE endpoint_id = :e ORDER BY event_id"), {"e": endpoint_id}
            ).mappings()
        ]


def event_ids(engine: Engine, app_id: int) -> list[tuple[int, int]]:
    """The application's (event id, chat number) in log order."""
    with engine.connect() as conn:
        return [
            (int(i), int(c))
            for i, c in conn.execute(
                text("SELECT id, chat_number FROM events WHERE application_id = :a ORDER BY id"), {"a": app_id}
            )
        ]


# -- dispatchers ------------------------------------------------------------------------------------------------------
def test_config(namespace, **overrides: object) -> DispatcherConfig:
    """A dispatcher configuration for the namespace: loopback allowed over http, short schedule, short lease."""
    values: dict = dict(
        database_url=namespace.settings.database_url,
        sealing_key=namespace.settings.webhook_sealing_key,
        port=0,
        lease_seconds=3.0,
        poll_interval_seconds=0.05,
        retry_schedule=SHORT_SCHEDULE,
        timeout_seconds=5.0,
        egress=LOOPBACK_ONLY,
    )
    values.update(overrides)
    return DispatcherConfig(**values)


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class InProcessDispatcher:
    """The real :class:`Dispatcher` on its own event loop in a thread (stopped as SIGTERM stops it)."""

    def __init__(self, config: DispatcherConfig) -> None:
        self.config = config
        self.engine = make_engine(config.database_url, pool_size=8)
        self.executor = ThreadPoolExecutor(8)
        self.dispatcher: Dispatcher | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="dispatcher")
        self._thread.start()
        self._ready.wait(10)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        self.dispatcher = Dispatcher(
            self.config,
            Store(self.engine, self.config.owner),
            TokenSealer.from_key(self.config.sealing_key),
            self.executor,
        )
        self._ready.set()
        await self.dispatcher.run(self.stop_event)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self._thread.join(20)
        self.executor.shutdown(wait=True)
        self.engine.dispose()


class DispatcherProcess:
    """``python -m webhook_dispatcher`` as a real process on the namespace, its output in ``log_path``."""

    def __init__(self, namespace, log_path: Path, **env: str) -> None:
        self.environ = {
            **os.environ,
            **namespace.environ(),
            "WEBHOOK_DISPATCHER_PORT": "0",
            "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_POLL_INTERVAL_MS": "50",
            **env,
        }
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self) -> DispatcherProcess:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webhook_dispatcher"], env=self.environ, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(20)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")
