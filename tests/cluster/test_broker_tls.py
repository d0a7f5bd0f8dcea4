"""``amqps://`` through chat_common.clients.broker against a private RabbitMQ node with a TLS listener and a CA of its
own.

The node (chat_devtools.rabbit_cluster, ``tls=True``) presents a certificate for ``localhost`` / 127.0.0.1 signed by a
CA made for the test. Checked, with real TLS handshakes: the CA given by ``RABBITMQ_CA_FILE`` (``ca_file``) makes the
broker trusted, by the writers' blocking connections and by the API's asyncio publisher; without it the system's CA
store does not trust the broker; a host name the certificate does not carry is refused (pika's ``ssl_options`` URL
query, which wins over the variable, names it here); a node list fails over to the TLS node.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from chat_api.adapters.publisher import ConfirmingPublisher
from chat_common.clients.broker import API, CHECK, WRITER, BrokerNodes
from chat_common.wire.topology import Topology
from chat_devtools.ports import free_port
from chat_devtools.rabbit_cluster import RabbitCluster, unavailable_reason
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[RabbitCluster]:
    """One private node with a TLS listener (a cluster of one)."""
    reason = unavailable_reason() or (None if shutil.which("openssl") else "openssl is not installed")
    if reason:
        pytest.skip(f"cannot start a private RabbitMQ node with TLS here: {reason}")
    cluster = RabbitCluster(LOG_ROOT / f"rabbit-tls-{uuid.uuid4().hex[:8]}", size=1, tls=True).start()
    yield cluster
    cluster.stop()


def test_the_given_ca_makes_the_broker_trusted(tls_cluster: RabbitCluster):
    node, ca = tls_cluster.nodes[0], str(tls_cluster.certificates.ca)
    connection = BrokerNodes(node.tls_url(), WRITER, ca_file=ca).connect_blocking()
    try:
        channel = connection.channel()
        name = f"tls_{uuid.uuid4().hex[:8]}"
        channel.queue_declare(name, auto_delete=True)
        channel.queue_delete(name)
    finally:
        connection.close()


def test_without_the_ca_or_for_another_host_name_the_broker_is_refused(tls_cluster: RabbitCluster):
    node, ca = tls_cluster.nodes[0], str(tls_cluster.certificates.ca)
    with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate in certificate chain"):
        BrokerNodes(node.tls_url(), CHECK).connect_blocking()  # the system's CA store does not know the test CA
    elsewhere = quote(repr({"ca_certs": ca, "server_hostname": "elsewhere.example"}))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):  # it names localhost only
        BrokerNodes(f"{node.tls_url()}?ssl_options={elsewhere}", CHECK, ca_file=ca).connect_blocking()


def test_a_node_list_fails_over_to_the_tls_node(tls_cluster: RabbitCluster):
    node, ca = tls_cluster.nodes[0], str(tls_cluster.certificates.ca)
    nodes = BrokerNodes(f"amqps://u:p@localhost:{free_port()}/%2F,{node.tls_url('127.0.0.1')}", CHECK, ca_file=ca)
    nodes.connect_blocking().close()
    assert nodes.failover_order() == [0, 1]  # connected to the second: the next attempt starts after it


def test_the_api_publisher_confirms_over_tls(tls_cluster: RabbitCluster):
    node, ca = tls_cluster.nodes[0], str(tls_cluster.certificates.ca)
    topology = Topology(f"tls_{uuid.uuid4().hex[:8]}")

    async def publish() -> None:
        publisher = ConfirmingPublisher(BrokerNodes(node.tls_url(), API, ca_file=ca), declare=topology.declare)
        await publisher.start()
        try:
            for _ in range(100):
                if publisher.is_ready:
                    break
                await asyncio.sleep(0.1)
            await publisher.publish(topology.chats.name, b"{}")  # raises unless the broker confirmed it
        finally:
            await publisher.close()

    asyncio.run(publish())
    connection = BrokerNodes(node.tls_url(), CHECK, ca_file=ca).connect_blocking()
    try:
        channel = connection.channel()
        assert channel.queue_declare(topology.chats.name, passive=True).method.message_count == 1
        for queue in (topology.chats, topology.messages):
            for name in queue.arguments():
                channel.queue_delete(name)
    finally:
        connection.close()
