"""The chart's RabbitMQ users per component, on a real broker: the definitions the chart renders, imported into a
private node (what the bundled broker loads at boot), then the system run with them.

- the API (its user) and both writers (theirs) do their jobs: a message goes from the API through the broker to
  its row, and the logs show no refused operation;
- KEDA's user reads a queue's depth (a passive declare) and can neither publish nor consume;
- the API's user cannot consume the retry tiers or the dead letters, the writers' cannot declare a server-named
  queue, and neither can touch another deployment's queues.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest

from chat_common.clients.broker import CHECK, node_parameters
from chat_common.ops.broker_users import permissions
from chat_devtools.http import Api
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.rabbit_cluster import RabbitCluster, RabbitNode, unavailable_reason
from tests.chart.rendering import of_kind, render
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"cs_users_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def definitions(prefix: str) -> dict:
    """The users the chart's bundled broker loads, for a deployment whose QUEUE_PREFIX is ``prefix``."""
    manifests = render({"auth": {"passwordSeed": "s" * 32}, "config": {"queuePrefix": prefix}})
    (secret,) = [m for m in of_kind(manifests, "Secret") if m.obj["metadata"]["name"] == "chat-chat-system"]
    return json.loads(base64.b64decode(secret.obj["data"]["RABBITMQ_DEFINITIONS"]))


CHART_DEFINITIONS = "/etc/rabbitmq/definitions/definitions.json"


@pytest.fixture(scope="module")
def advanced_config(prefix: str) -> str:
    """The bundled broker's advanced.config as the chart renders it (it names the definitions file)."""
    manifests = render({"auth": {"passwordSeed": "s" * 32}, "config": {"queuePrefix": prefix}})
    (config,) = [m for m in of_kind(manifests, "ConfigMap") if m.obj["metadata"]["name"].endswith("-rabbitmq-conf")]
    text = config.obj["data"]["advanced.config"]
    assert CHART_DEFINITIONS in text
    return text


@pytest.fixture(scope="module")
def node(definitions: dict, advanced_config: str) -> Iterator[RabbitNode]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot start a private RabbitMQ node here: {reason}")
    cluster = RabbitCluster(LOG_ROOT / f"rabbit-users-{uuid.uuid4().hex[:8]}", size=1)
    node = cluster.nodes[0]
    node.prepare()  # then the files below replace what it wrote; started, it finds itself prepared
    (node.dir / ".prepared").touch()
    # As the chart's broker does: the definitions file from the release Secret, named by its advanced.config.
    path = node.dir / "definitions.json"
    # A broker that loads definitions at boot seeds no default user: the chart's definitions carry its
    # administrator; this node's own (the test's cleanup and readiness probe use it) is added to this copy.
    own = {
        "users": [*definitions["users"], {"name": node.user, "password": node.password, "tags": ["administrator"]}],
        "permissions": [
            *definitions["permissions"],
            {"user": node.user, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
        ],
    }
    path.write_text(json.dumps({**definitions, **own}))
    (node.dir / "advanced.config").write_text(advanced_config.replace(CHART_DEFINITIONS, str(path)))
    cluster.start()
    yield node
    cluster.stop()


def url(node: RabbitNode, definitions: dict, role: str) -> str:
    user = next(u for u in definitions["users"] if u["name"].endswith(f"_{role}"))
    return f"amqp://{user['name']}:{user['password']}@127.0.0.1:{node.port}/%2F"


def refused(connection_url: str, act) -> bool:
    """True when the broker refuses what ``act(channel)`` does (403 ACCESS_REFUSED)."""
    connection = pika.BlockingConnection(node_parameters(connection_url, CHECK))
    try:
        channel = connection.channel()
        act(channel)
        channel.basic_qos(prefetch_count=1)  # a round trip: a publish is refused asynchronously
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code == 403
    finally:
        if connection.is_open:
            connection.close()
    return False


def test_the_chart_grants_what_chat_common_broker_users_says(definitions: dict, prefix: str):
    granted = {p["user"].rsplit("_", 1)[1]: p for p in definitions["permissions"] if p["user"] != "chat"}
    tags = {u["name"].rsplit("_", 1)[1]: ",".join(u["tags"]) for u in definitions["users"] if u["name"] != "chat"}
    for role, expected in permissions(prefix).items():
        assert (granted[role]["configure"], granted[role]["write"], granted[role]["read"], tags[role]) == (
            expected.configure,
            expected.write,
            expected.read,
            expected.tags,
        ), role


def test_api_and_writers_do_their_jobs_with_their_own_users(node: RabbitNode, definitions: dict, prefix: str):
    namespace = Namespace.create("mqu", rabbitmq_url=url(node, definitions, "api"), queue_prefix=prefix)
    log_dir = LOG_ROOT / f"broker-users-{prefix}"
    system = System(namespace, log_dir, api_workers=1)
    for writer in (system.chat_writer, system.message_writer):
        writer.env = {**writer.env, "RABBITMQ_URL": url(node, definitions, "writer")}
    system.start()
    try:
        Api(system.base_url).first_message_stored("users per component", "through the broker with least privilege")
    finally:
        system.stop()
        # Deleting the queues is the administrator's (the legacy retry tiers are nobody's to configure now).
        Namespace(namespace.name, dataclasses.replace(namespace.settings, rabbitmq_url=node.url)).destroy()
    logs = "".join(path.read_text(errors="replace") for path in log_dir.glob("*.log"))
    assert "ACCESS_REFUSED" not in logs


def test_keda_reads_depths_and_nothing_else(node: RabbitNode, definitions: dict, prefix: str):
    admin = node.url
    queue = f"{prefix}.chats"
    connection = pika.BlockingConnection(node_parameters(admin, CHECK))
    connection.channel().queue_declare(f"{prefix}.probe", durable=False, auto_delete=False)
    connection.close()
    monitor = url(node, definitions, "monitor")
    connection = pika.BlockingConnection(node_parameters(monitor, CHECK))
    assert connection.channel().queue_declare(f"{prefix}.probe", passive=True).method.message_count == 0
    connection.close()
    assert refused(monitor, lambda ch: ch.basic_publish("", queue, b"forged"))
    assert refused(monitor, lambda ch: ch.basic_get(f"{prefix}.probe"))
    assert refused(monitor, lambda ch: ch.queue_declare(f"{prefix}.leak"))


def test_each_publisher_is_kept_to_its_own_queues(node: RabbitNode, definitions: dict, prefix: str):
    api, writer = url(node, definitions, "api"), url(node, definitions, "writer")
    connection = pika.BlockingConnection(node_parameters(node.url, CHECK))
    channel = connection.channel()
    for name in (f"{prefix}.chats.delay.1s", f"{prefix}.chats.dead", "other_deployment.chats"):
        channel.queue_declare(name, durable=True)
    connection.close()
    assert refused(api, lambda ch: ch.basic_get(f"{prefix}.chats.delay.1s"))
    assert refused(api, lambda ch: ch.basic_get(f"{prefix}.chats.dead"))
    assert refused(writer, lambda ch: ch.basic_get(f"{prefix}.chats.dead"))
    assert refused(writer, lambda ch: ch.queue_declare("", exclusive=True))
    for user in (api, writer):
        assert refused(user, lambda ch: ch.basic_get("other_deployment.chats"))
        assert refused(user, lambda ch: ch.queue_delete("other_deployment.chats"))
