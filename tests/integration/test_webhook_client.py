"""The dispatcher's own HTTP client (``webhook_dispatcher.delivery.Sender``) against real local servers: keep-alive
reuse, a receiver closing idle connections, chunked answers, an answer past the limit, TLS (a certificate of the
test's own, and one for another name) and a receiver that never answers.

The receivers are raw asyncio servers in the test's own loop, so each test counts the connections they accept and
decides, request by request, what they answer.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat_common.webhooks.egress import EgressPolicy
from webhook_dispatcher.delivery import USER_AGENT, Outcome, Sender

LOOPBACK = EgressPolicy(allow=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True)
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"

# What a receiver answers to the n-th request (0-based) on a connection: bytes to send, or None to close instead.
Answer = Callable[[int, bytes], bytes | None]


class Receiver:
    """A local HTTP/1.1 server reading requests framed by Content-Length; counts connections and keeps requests."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None, close_after_answer: bool = False) -> None:
        self.answer = answer
        self.tls = tls
        self.close_after_answer = close_after_answer  # as a server with a short keep-alive timeout does
        self.accepted = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # Python 3.11's Server has no close_clients()
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            for n in range(1_000_000):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.answer(n, request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _sender(policy: EgressPolicy = LOOPBACK, limit: int = 4096, **kwargs: object) -> Sender:
    return Sender(policy, timeout=2.0, max_response_bytes=limit, per_host=4, **kwargs)  # type: ignore[arg-type]


def test_sequential_deliveries_reuse_one_kept_alive_connection_and_send_the_request_as_specified():
    async def scenario() -> None:
        async with Receiver(lambda n, r: NO_CONTENT) as receiver:
            sender = _sender()
            url = f"http://127.0.0.1:{receiver.port}/hooks/in?tenant=7"
            for i in range(20):
                attempt = await sender.post(url, {"webhook-id": f"evt_{i}"}, b'{"n":%d}' % i)
                assert attempt.outcome is Outcome.DELIVERED and attempt.status == 204
            await sender.close()
        assert receiver.accepted == 1 and len(receiver.requests) == 20
        head, _, body = receiver.requests[3].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /hooks/in?tenant=7 HTTP/1.1" and body == b'{"n":3}'
        fields = {k.lower(): v.strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
        assert fields[b"host"] == f"127.0.0.1:{receiver.port}".encode() and fields[b"webhook-id"] == b"evt_3"
        assert fields[b"content-type"] == b"application/json" and fields[b"user-agent"] == USER_AGENT.encode()
        assert fields[b"content-length"] == b"7"

    asyncio.run(scenario())


def test_a_receiver_closing_idle_connections_costs_a_fresh_connection_not_a_delivery():
    async def scenario() -> None:
        async with Receiver(lambda n, r: NO_CONTENT, close_after_answer=True) as receiver:
            sender = _sender()
            url = f"http://127.0.0.1:{receiver.port}/"
            for _ in range(3):
                assert (await sender.post(url, {}, b"{}")).outcome is Outcome.DELIVERED
                await asyncio.sleep(0.05)  # the close arrives while the connection is idle
            await sender.close()
        assert receiver.accepted == 3

    asyncio.run(scenario())


def test_a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_once_on_a_fresh_one():
    # Each connection answers only its first request and closes on the next one without a byte of answer: the keep-
    # alive race, made deterministic. A fresh connection that fails the same way is not retried.
    async def scenario() -> None:
        async with Receiver(lambda n, r: NO_CONTENT if n == 0 else None) as receiver:
            sender = _sender()
            url = f"http://127.0.0.1:{receiver.port}/"
            for _ in range(4):
                assert (await sender.post(url, {}, b"{}")).outcome is Outcome.DELIVERED
            await sender.close()
        assert receiver.accepted == 4 and len(receiver.requests) == 7  # 3 requests lost to the race, sent again
        async with Receiver(lambda n, r: None) as silent:
            sender = _sender()
            attempt = await sender.post(f"http://127.0.0.1:{silent.port}/", {}, b"{}")
            await sender.close()
        assert attempt.outcome is Outcome.RETRY and attempt.error.startswith("network error")
        assert silent.accepted == 1

    asyncio.run(scenario())


def test_chunked_answers_are_read_to_their_end_and_the_connection_reused():
    def chunked(n: int, request: bytes) -> bytes:
        if n == 1:
            head = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
            return head + b"3\r\nno!\r\n0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    async def scenario() -> None:
        async with Receiver(chunked) as receiver:
            sender = _sender()
            url = f"http://127.0.0.1:{receiver.port}/"
            first, second, third = [await sender.post(url, {}, b"{}") for _ in range(3)]
            await sender.close()
        assert first.outcome is Outcome.DELIVERED and first.status == 200
        assert second.outcome is Outcome.RETRY and second.status == 429 and second.retry_after == 7
        assert third.outcome is Outcome.DELIVERED and receiver.accepted == 1

    asyncio.run(scenario())


def test_an_answer_past_the_limit_drops_the_connection_and_the_next_delivery_is_fine():
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000

    answers = iter([big])

    async def scenario() -> None:
        async with Receiver(lambda n, r: next(answers, NO_CONTENT)) as receiver:  # the first answer only is big
            sender = _sender(limit=1024)
            url = f"http://127.0.0.1:{receiver.port}/"
            first = await sender.post(url, {}, b"{}")
            second = await sender.post(url, {}, b"{}")
            third = await sender.post(url, {}, b"{}")
            await sender.close()
        assert first.outcome is Outcome.DELIVERED and first.status == 200
        assert second.status == 204 and third.status == 204
        assert receiver.accepted == 2  # the first connection dropped, the second one kept

    asyncio.run(scenario())


def test_a_receiver_that_never_answers_is_a_retry_after_the_time_limit():
    async def scenario() -> None:
        async with Receiver(lambda n, r: b"") as receiver:  # reads the request, answers nothing
            sender = Sender(LOOPBACK, timeout=0.3, max_response_bytes=1024, per_host=1)
            started = time.monotonic()
            attempt = await sender.post(f"http://127.0.0.1:{receiver.port}/", {}, b"{}")
            took = time.monotonic() - started
            await sender.close()
        assert attempt.outcome is Outcome.RETRY and attempt.error == "no answer within 0.3 s"
        assert 0.25 < took < 1.5

    asyncio.run(scenario())


def test_names_are_resolved_and_only_allowed_addresses_connected_to():
    async def scenario() -> None:
        async with Receiver(lambda n, r: NO_CONTENT) as receiver:
            allowed = _sender()  # localhost is ::1 and 127.0.0.1 here: only the latter is allowed (and listening)
            assert (await allowed.post(f"http://localhost:{receiver.port}/", {}, b"{}")).outcome is Outcome.DELIVERED
            await allowed.close()
            strict = _sender(EgressPolicy(allow_http=True))
            refused = await strict.post(f"http://localhost:{receiver.port}/", {}, b"{}")
            await strict.close()
        assert refused.outcome is Outcome.REFUSED and "loopback" in refused.error
        assert receiver.accepted == 1

    asyncio.run(scenario())


# -- TLS --------------------------------------------------------------------------------------------------------------
def _certificate(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for ``name`` (and 127.0.0.1 when ``name`` is localhost): the server's context and a
    client context trusting only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    if name == "localhost":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


def test_a_tls_receiver_is_verified_against_the_urls_host_and_another_names_certificate_is_refused():
    async def scenario(directory: Path) -> None:
        server, client = _certificate(directory, "localhost")
        async with Receiver(lambda n, r: NO_CONTENT, tls=server) as receiver:
            sender = _sender(LOOPBACK, ssl_context=client)
            for host in ("localhost", "127.0.0.1", "localhost"):
                attempt = await sender.post(f"https://{host}:{receiver.port}/", {}, b"{}")
                assert attempt.outcome is Outcome.DELIVERED, attempt
            await sender.close()
        assert receiver.accepted == 2  # one connection per host name, the second localhost delivery reused its own
        other_server, other_client = _certificate(directory, "other.example")
        async with Receiver(lambda n, r: NO_CONTENT, tls=other_server) as impostor:
            sender = _sender(LOOPBACK, ssl_context=other_client)  # trusts the certificate, which names another host
            attempt = await sender.post(f"https://localhost:{impostor.port}/", {}, b"{}")
            await sender.close()
        assert attempt.outcome is Outcome.RETRY and attempt.error == "cannot connect: SSLCertVerificationError"
        assert impostor.requests == []

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(scenario(Path(directory)))
