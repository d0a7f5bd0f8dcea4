"""Broker connections (chat_common.clients.broker): RABBITMQ_URL node lists, the failover order, TLS and the connection
profiles — on fakes of pika's connection, nothing opens a socket."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from urllib.parse import quote

import pika.exceptions
import pytest

from chat_common.clients.broker import API, CHECK, WRITER, BrokerNodes, node_parameters, parse_urls
from chat_common.config import Settings
from chat_devtools.tinyca import TinyCA


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a broker unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_one_url_or_a_comma_separated_list_of_nodes():
    assert parse_urls("amqp://a") == ("amqp://a",)
    assert parse_urls(" amqp://a , amqp://b,,amqp://c ") == ("amqp://a", "amqp://b", "amqp://c")
    with pytest.raises(ValueError, match="names no broker"):
        parse_urls(" , ")


def test_each_node_of_a_list_gets_its_own_parameters():
    """What recovery did wrong before: pika reads a whole list as one URL with virtual host '/,amqp:'."""
    nodes = BrokerNodes("amqp://u:p@h1:5672/%2F,amqp://u:p@h2:5673/vh")
    assert [(p.host, p.port, p.virtual_host) for p in map(nodes.parameters, range(2))] == [
        ("h1", 5672, "/"),
        ("h2", 5673, "vh"),
    ]


def test_profiles_keep_each_callers_heartbeat_and_timeouts_and_try_a_node_once():
    writer = node_parameters("amqp://h", WRITER)
    assert (writer.heartbeat, writer.socket_timeout, writer.blocked_connection_timeout) == (30, 5, 60)
    api = node_parameters("amqp://h", API)
    assert api.heartbeat == 30 and api.blocked_connection_timeout is None
    check = node_parameters("amqp://h", CHECK)
    assert check.socket_timeout == 5 and check.heartbeat is None  # None: the broker's own value is accepted
    assert writer.connection_attempts == api.connection_attempts == check.connection_attempts == 1


class Nodes:
    """A fake of pika.BlockingConnection over named nodes, some of them down."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.tried: list[str] = []

    def __call__(self, parameters):
        self.tried.append(parameters.host)
        if parameters.host in self.down:
            raise pika.exceptions.AMQPConnectionError(f"{parameters.host} refused")
        return parameters.host


def test_blocking_connections_start_after_the_node_last_connected_to():
    nodes = BrokerNodes("amqp://a,amqp://b,amqp://c")
    fake = Nodes(down={"a"})
    assert nodes.connect_blocking(fake) == "b" and fake.tried == ["a", "b"]
    assert nodes.connect_blocking(fake) == "c"  # b was lost (or not): the next connection starts after it
    fake.down = {"a", "c"}
    fake.tried.clear()
    assert nodes.connect_blocking(fake) == "b" and fake.tried == ["a", "b"]  # after c comes a, then b


def test_a_whole_round_of_refusals_raises_the_last_one():
    fake = Nodes(down={"a", "b"})
    with pytest.raises(pika.exceptions.AMQPConnectionError, match="b refused"):
        BrokerNodes("amqp://a,amqp://b").connect_blocking(fake)
    assert fake.tried == ["a", "b"]


def test_asynchronous_callers_fail_over_at_once_and_back_off_only_after_a_whole_round():
    nodes = BrokerNodes("amqp://a,amqp://b,amqp://c")
    served, slept = [], []
    # b serves a connection that later dies; then every node refuses twice round; then c serves.
    outcomes = iter([False, True, False, False, False, False, False, False, True])

    async def serve(parameters) -> bool:
        served.append(parameters.host)
        return next(outcomes)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    asyncio.run(nodes.keep_connected(serve, stopping=lambda: len(served) == 9, sleep=sleep))
    assert served == ["a", "b", "c", "a", "b", "c", "a", "b", "c"]  # after losing b: c first
    assert slept == [0.2, 0.2, 0.4, 0.2]  # after b's connection; after each refused round (doubling); after c's


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory) -> Path:
    """A self-signed CA certificate (PEM), made in process (no openssl command to spawn)."""
    return TinyCA("chat-system test CA").save(tmp_path_factory.mktemp("ca"), "ca").cert


def _trusted(parameters) -> list[str]:
    return [
        dict(item[0] for item in cert["subject"])["commonName"]
        for cert in parameters.ssl_options.context.get_ca_certs()
    ]


def test_amqps_verifies_the_broker_with_the_given_ca_and_amqp_stays_plain(ca_file):
    tls = BrokerNodes("amqps://u:p@broker.internal/%2F", WRITER, ca_file=str(ca_file)).parameters(0)
    context = tls.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname  # never turned off
    assert _trusted(tls) == ["chat-system test CA"] and tls.port == 5671
    assert tls.ssl_options.server_hostname is None  # pika then checks the certificate against the URL's host
    assert BrokerNodes("amqp://u:p@h/%2F", ca_file=str(ca_file)).parameters(0).ssl_options is None


def test_amqps_without_a_ca_file_uses_pikas_verifying_default_and_the_url_query_wins_over_the_variable(ca_file):
    default = BrokerNodes("amqps://h").parameters(0)
    assert default.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    other = ca_file.parent / "other.pem"
    other.write_text(ca_file.read_text())
    query = quote(repr({"ca_certs": str(other), "server_hostname": "rabbit.example"}))
    from_url = BrokerNodes(f"amqps://h/%2F?ssl_options={query}", ca_file="/nonexistent.pem").parameters(0)
    assert from_url.ssl_options.server_hostname == "rabbit.example" and _trusted(from_url) == ["chat-system test CA"]


def test_settings_name_the_nodes_and_the_ca_file(ca_file):
    settings = Settings(rabbitmq_url="amqps://a,amqps://b", rabbitmq_ca_file=str(ca_file))
    nodes = BrokerNodes.from_settings(settings, WRITER)
    assert nodes.urls == ("amqps://a", "amqps://b") and nodes.profile is WRITER
    assert _trusted(nodes.parameters(1)) == ["chat-system test CA"]
