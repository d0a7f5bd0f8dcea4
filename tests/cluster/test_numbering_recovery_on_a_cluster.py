"""Numbering re-opens after Redis lost every key while ``RABBITMQ_URL`` lists the three nodes of a RabbitMQ cluster.

Numbering recovery counts the work queues and retry tiers over its own short broker connection
(chat_api.adapters.recovery). It used to hand the whole comma-separated ``RABBITMQ_URL`` to pika as one URL (host 1,
virtual host ``'/,amqp:'``): the broker refused it, every round logged "cannot reach the broker", and after a Redis
loss every create answered 503 for good — on exactly the setups that list their nodes. Now every connection comes
from chat_common.clients.broker, which splits the list and fails over.

The whole system runs on the private 3-node cluster with the node list (API and writers), the namespace's Redis
keys are deleted (what FLUSHDB does to it), and creates must answer 201 again, numbered after everything answered
before the wipe.
"""

from __future__ import annotations

import time

import pytest
import requests

from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.processes import System
from chat_devtools.rabbit_cluster import RabbitCluster
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow

# Grace (the 5 s publish timeout) + a recovery round (~2.5 s) + the watchdog's second, on 2 busy cores.
REOPEN_BOUND = 30.0


def _create_message(api: Api, token: str, chat: int, body: str) -> int | None:
    """The number of a message created now, or None while numbering is closed (503)."""
    try:
        resp = api.post(f"/applications/{token}/chats/{chat}/messages", json={"body": body})
    except requests.RequestException:
        return None
    assert resp.status_code in (201, 503), resp.text
    return resp.json()["message_number"] if resp.status_code == 201 else None


def test_numbering_reopens_after_a_redis_wipe_with_rabbitmq_url_listing_three_nodes(healthy_cluster: RabbitCluster):
    cluster = healthy_cluster
    namespace = Namespace.create("clrec", rabbitmq_url=cluster.urls)
    assert namespace.settings.rabbitmq_url.count(",") == 2  # the API and the writers get every node's URL
    system = System(namespace, LOG_ROOT / namespace.name, api_workers=2)
    try:
        system.start()
        api = Api(system.base_url)
        token = api.new_application("recovery on a cluster")
        chat = api.new_chat(token)
        before = [api.new_message(token, chat, f"before {i}") for i in range(5)]
        api.wait_message(token, chat, before[-1])

        namespace.flush_redis()  # every key of the namespace: epochs, counters, heartbeats, the deferral ledger
        wiped_at = time.monotonic()
        assert _create_message(api, token, chat, "right after the wipe") is None  # closed: Redis lost its data

        number = wait_for(
            lambda: _create_message(api, token, chat, "after the wipe"),
            timeout=REOPEN_BOUND,
            interval=0.5,
            what="a message create answered 201 after the Redis wipe",
        )
        reopened_after = time.monotonic() - wiped_at
        assert number > max(before)  # counters re-seeded from MySQL: no number answered twice
        assert api.new_chat(token) == chat + 1
        assert requests.get(f"{system.base_url}/status", timeout=10).json()["checks"]["numbering"] == "open"
        log = (system.log_dir / "api.log").read_text()
        assert "numbering recovery cannot reach the broker" not in log
        print(f"numbering re-opened {reopened_after:.1f}s after the Redis wipe, RABBITMQ_URL listing 3 nodes")
    finally:
        system.stop()
        namespace.destroy()
