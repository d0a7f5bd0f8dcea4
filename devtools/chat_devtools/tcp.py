"""TCP in-betweens on loopback: a balancer in front of several servers, a proxy that cuts or slows one.

:class:`TcpBalancer` plays a Kubernetes Service in front of a private RabbitMQ cluster (one address, connections
spread over the nodes that accept them). :class:`TcpProxy` stands in front of one server and makes it unreachable
on demand (:meth:`TcpProxy.block`) or slow (``delay``): how tests fault a service they cannot kill themselves
(Elasticsearch) or want to stall without losing its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Sequence

from chat_devtools.ports import free_port


class TcpBalancer:
    """Round-robin TCP forwarding to the first backend that accepts, on an asyncio loop of its own thread.

    A Kubernetes Service spreads connections over the ready pods; a pod that died stops receiving new ones.
    Here a backend that refuses the connection is skipped, and connections to a backend that dies are cut.
    """

    def __init__(self, backends: Sequence[tuple[str, int]], connect_timeout: float = 2.0) -> None:
        self.backends = list(backends)
        self.connect_timeout = connect_timeout
        self.port = free_port()
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tcp-balancer", daemon=True)
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> TcpBalancer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("balancer did not start")
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            upstream = await self._connect_any()
            if upstream is None:
                writer.close()
                return
            up_reader, up_writer = upstream
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)

    async def _connect_any(self):
        for _ in range(len(self.backends)):
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
            except (OSError, TimeoutError):
                continue
        return None

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


class TcpProxy:
    """A TCP forwarder whose :meth:`block` makes the target unreachable (resets connections, refuses new ones).

    With ``delay``, every chunk waits that long before it is forwarded: a slow network, under which a
    blocking call on an event loop stalls it for at least ``delay``.
    """

    def __init__(self, target_host: str, target_port: int, delay: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = free_port()
        self.blocked = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def block(self) -> None:
        """Cut every open connection and refuse new ones, as a crashed server would."""
        self.blocked.set()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()

    def unblock(self) -> None:
        self.blocked.clear()

    def close(self) -> None:
        self._closed = True
        self.block()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the connect timeout must not cut an idle connection later
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for source, sink in (pair, pair[::-1]):
                threading.Thread(target=self._pipe, args=(source, sink, pair), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, pair) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
