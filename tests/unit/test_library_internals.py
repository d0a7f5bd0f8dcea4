"""The library internals the code relies on, held to the pinned versions (requirements.txt).

Each of these has no public extension point in the pinned version, so the code uses it and says why where it
does; these tests fail when a new version changes what is relied on, so that an upgrade re-reads it rather than
finding out in production. On a failure: read the new version's code, adapt (or drop) the use, then update the
digest here.

- pika 1.4.4: ``_AsyncTransportBase._produce`` wrapped to join the queued frames (``chat_api.adapters.publisher``).
- uvicorn-worker 0.4.0: ``UvicornWorker._serve`` copied to choose the server class (``chat_api.worker``).
- uvicorn 0.54.0: ``Server.shutdown`` overridden, and the ``send`` an app gets is a bound method of the request
  cycle, which holds the connection's ``transport`` (``chat_api.streams.asgi.aborter``; the live check of that is
  ``tests/integration/test_library_internals.py``).
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import textwrap

from pika.adapters.utils import io_services_utils
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from chat_api.adapters.publisher import _produce_frame_by_frame, _produce_joined
from chat_api.worker import ApiWorker, StreamEndingServer


def digest(function) -> str:
    """A short digest of a function's source (dedented): changes with any change to the code."""
    return hashlib.sha256(textwrap.dedent(inspect.getsource(function)).encode()).hexdigest()[:16]


def test_pikas_produce_is_the_one_the_joined_writes_wrap():
    # pika 1.4.4: sends tx_buffers[0] and pops it, re-queues a partial send, keeps _tx_buffered_byte_count.
    # pika's own method, as the publisher module kept it before any publisher replaced it process-wide (a test run
    # that built a publisher earlier has io_services_utils._AsyncTransportBase._produce pointing at the wrapper).
    assert digest(_produce_frame_by_frame) == "ecc38a696ee88744"
    # The TLS transport sends through the base class's method (so it is joined too).
    assert "super()._produce()" in inspect.getsource(io_services_utils._AsyncSSLTransport._produce)


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)


def test_joined_writes_send_the_queued_frames_in_one_call_through_pikas_own_loop():
    transport = object.__new__(io_services_utils._AsyncPlaintextTransport)  # just the fields _produce uses
    transport._sock = RecordingSocket()
    transport._tx_buffers = collections.deque([b"method", b"header", b"body"])
    transport._tx_buffered_byte_count = 16
    transport._state = None
    _produce_joined(transport)
    assert transport._sock.sent == [b"methodheaderbody"]
    assert not transport._tx_buffers and transport._tx_buffered_byte_count == 0


def test_uvicorn_workers_serve_is_the_one_the_api_worker_copies():
    # uvicorn-worker 0.4.0: sets config.app, builds Server(config=...), installs SIGQUIT, serves, exits on boot error.
    assert digest(UvicornWorker._serve) == "b99ab14ff06c45a0"
    copied = inspect.getsource(ApiWorker._serve)
    for line in ("self.config.app = self.wsgi", "self._install_sigquit_handler()",
                 "await server.serve(sockets=self.sockets)", "sys.exit(Arbiter.WORKER_BOOT_ERROR)"):  # fmt: skip
        assert line in copied


def test_uvicorn_server_shutdown_stops_accepting_then_waits_for_the_responses():
    # uvicorn 0.54.0: closes self.servers, asks connections to shut down, waits for them, then the lifespan.
    assert digest(Server.shutdown) == "9f8a90ed456dcfee"
    assert list(inspect.signature(Server.__init__).parameters) == ["self", "config"]
    assert issubclass(StreamEndingServer, Server)
