"""The chart names the writers' queues (KEDA scales on them); topology.py is the source, and they must agree."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from chat_common.wire import topology

HELPERS = Path(__file__).resolve().parents[2] / "helm" / "chat-system" / "templates" / "_helpers.tpl"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a unit test tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def chart_queue_suffixes() -> dict[str, str]:
    """Writer -> queue suffix, from the ``chat-system.writers`` helper's text."""
    text = HELPERS.read_text()
    body = re.search(r'\{\{- define "chat-system\.writers" -\}\}(.*?)\{\{- end -\}\}', text, re.S).group(1)
    writers = re.findall(
        r'^([a-z-]+):\n(?:  .*\n)*?  queue: \{\{ printf "%s\.([a-z_.]+)" \.Values\.config\.queuePrefix \}\}', body, re.M
    )
    return dict(writers)


def test_the_charts_queue_suffixes_are_topologys():
    assert chart_queue_suffixes() == {"chat-writer": topology.CHATS, "message-writer": topology.MESSAGES}


def test_topology_builds_the_same_names():
    t = topology.Topology("p")
    assert (t.chats.name, t.messages.name) == (f"p.{topology.CHATS}", f"p.{topology.MESSAGES}")
