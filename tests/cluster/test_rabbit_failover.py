"""The system on a 3-node RabbitMQ cluster: SIGKILL the node that leads the messages queue under create load.

The API gets every node's URL (``RABBITMQ_URL`` as a comma-separated list), the writers one address in front of
the nodes (the TCP balancer, as a Kubernetes Service would be). Work queues are quorum queues (the default). Under
a steady stream of creates through the real API, the node leading ``<prefix>.messages`` is SIGKILLed, kept down,
then restarted with its data. Checked:

- nothing accepted is lost or stored twice: every 201 is in MySQL exactly once with its number and text;
- creates answer 201 again within a few seconds of the kill, *while the node is still down* (with classic queues,
  no create was accepted until the queues' node came back);
- the writers resume on another node: every create accepted so far is stored before the node is restarted;
- the restarted node rejoins, and the API and both writers are still running.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest
import requests

from chat_common.db import make_engine
from chat_devtools.rabbit_cluster import RabbitCluster
from tests.chaos.workload import Attempt, Workload, _stored, audit
from tests.conftest import LOG_ROOT
from tests.support.http import Api, wait_for
from tests.support.namespace import Namespace
from tests.support.processes import System

pytestmark = pytest.mark.slow

STEADY = 3.0  # load before the kill and after the restart
RESUME_BOUND = 10.0  # a create must be accepted again this soon after the kill (2 cores, shared with CI)
DOWN_AT_LEAST = 4.0  # the killed node stays down at least this long (longer while the checks run)


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """Longest stretch in [start, end] without a 201."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def test_killing_the_messages_queue_leader_loses_nothing_and_creates_resume(healthy_cluster: RabbitCluster):
    cluster = healthy_cluster
    namespace = Namespace.create("cluster", rabbitmq_url=cluster.urls)
    assert namespace.settings.queue_type == "quorum"
    system = System(namespace, LOG_ROOT / namespace.name, api_workers=2)
    for writer in (system.chat_writer, system.message_writer):
        writer.env = {**system.env, "RABBITMQ_URL": cluster.balanced_url}  # one Service address
    engine = make_engine(namespace.settings.database_url, pool_size=2)
    load: Workload | None = None
    try:
        system.start()
        api = Api(system.base_url)
        token = api.new_application("cluster failover")
        seed = {api.new_chat(token, f"seed {i}"): f"seed {i}" for i in range(3)}
        own: list[Attempt] = []  # creates the test sends itself, audited with the load's
        for number in seed:
            api.wait_chat(token, number)
            # Numbering loads the chat's counter now, not under the kill.
            text = f"warm-up {number}"
            own.append(Attempt("message", text, number, 201, api.new_message(token, number, text), 0.0, 0.0))
        queue = f"{namespace.settings.queue_prefix}.messages"
        queues = {row["name"]: row for row in cluster.queues()}
        assert queues[queue]["type"] == "quorum" and len(queues[queue]["members"]) == 3, queues[queue]
        leader = cluster.leader_of(queue)

        # Messages to the seeded chats only: the first message to a new chat reads its last number from MySQL
        # (the shared server here, whose stalls would be measured instead of the broker's failover); chat creates
        # are checked on their own below.
        load = Workload(system.base_url, token, list(seed), threads=4, chat_every=10**9, label="cluster").start()
        time.sleep(STEADY)
        killed_at = time.monotonic()
        leader.kill()

        # Creates resume while the node is down: another member leads the queue, the API publishes elsewhere.
        resumed_after = wait_for(
            lambda: _first_accepted_sent_after(load.attempts, killed_at),
            timeout=RESUME_BOUND + 20,
            what="a create sent after the kill and accepted",
        )
        # The chats queue was led by the same node: chat creates resume too.
        chat_created = wait_for(lambda: _create_chat(system.base_url, token, own), timeout=RESUME_BOUND, what="a chat")
        time.sleep(max(DOWN_AT_LEAST - (time.monotonic() - killed_at), 0))

        # The writers resume on a surviving node: everything accepted until now is stored with the node still down.
        checkpoint = time.monotonic()
        accepted = {(a.chat, a.number) for a in list(load.attempts) if a.status == 201 and a.kind == "message"}
        wait_for(lambda: _stored_all(engine, token, accepted), timeout=30, what="accepted messages stored, node down")
        stored_while_down = len(accepted)
        assert not leader.running
        new_leader = cluster.leader_of(queue)
        assert new_leader is not leader

        restarted_at = time.monotonic()
        leader.start().wait_ready()
        rejoined_after = time.monotonic() - restarted_at
        wait_for(lambda: leader.node in cluster.running_nodes(), timeout=30, what="the restarted node rejoined")
        time.sleep(STEADY)
        attempts = load.stop()
        load = None

        attempts = [*attempts, *own]
        figures = audit(engine, token, attempts, seed)
        accepted_times = [a.at for a in attempts if a.status == 201]
        longest_gap = _longest_gap(accepted_times, killed_at, restarted_at)
        report = {
            "attempts": figures.attempts,
            "accepted": figures.accepted,
            "persisted": figures.persisted,
            "lost": figures.lost,
            "duplicated": figures.duplicated + figures.numbers_answered_twice,
            "answered_503": figures.answered_503,
            "no_answer": figures.no_answer,
            "stored_after_503": figures.stored_after_503,
            "first_201_sent_after_kill_s": round(resumed_after, 2),
            "longest_gap_without_201_while_down_s": round(longest_gap, 2),
            "accepted_while_node_down": load_accepted(attempts, killed_at, restarted_at),
            "stored_while_node_down": stored_while_down,
            "node_down_s": round(restarted_at - killed_at, 1),
            "node_reboot_s": round(rejoined_after, 1),
            "checkpoint_after_kill_s": round(checkpoint - killed_at, 1),
            # 503s per second after the kill (the clients retry at once, so a short outage shows many).
            "answered_503_per_second_after_kill": _per_second(attempts, killed_at, 503, 10),
            "answered_201_per_second_after_kill": _per_second(attempts, killed_at, 201, 10),
            "chat_created_after_kill": chat_created,
            "old_leader": leader.node,
            "new_leader": new_leader.node,
        }
        (LOG_ROOT / f"{namespace.name}-rabbit-failover.json").write_text(json.dumps(report, indent=2))
        print("rabbit cluster failover:", json.dumps(report))

        assert figures.accepted > 50, report
        assert figures.lost == 0, figures.examples
        assert figures.duplicated == 0 and figures.numbers_answered_twice == 0, figures.examples
        assert figures.invented == 0, figures.examples
        assert figures.other_status == {}, f"answers other than 201/503: {figures.other_status}"
        assert resumed_after < RESUME_BOUND, report
        assert report["accepted_while_node_down"] > 0, report
        alive = {p.name: p.popen.poll() is None for p in (system.api, system.chat_writer, system.message_writer)}
        assert all(alive.values()), alive
        assert requests.get(f"{system.base_url}/readyz", timeout=10).status_code == 200
    finally:
        if load is not None:
            load.stop()
        system.stop()
        engine.dispose()
        for node in cluster.nodes:  # the namespace's queues live on the cluster: delete them there
            if not node.running:
                node.start().wait_ready()
        namespace.destroy()


def _create_chat(base_url: str, token: str, own: list[Attempt]) -> int | None:
    """The number of a chat created now, or None when the API refused (503) or did not answer."""
    name = f"after the kill {len(own)}"
    try:
        response = requests.post(f"{base_url}/applications/{token}/chats", json={"name": name}, timeout=5)
        status = response.status_code
    except requests.RequestException:
        status = 0
    number = response.json()["chat_number"] if status == 201 else None
    own.append(Attempt("chat", name, None, status, number, time.monotonic(), 0.0))
    return number


def _first_accepted_sent_after(attempts, moment: float) -> float | None:
    """Seconds from ``moment`` to the 201 of the first create *sent* after it (None: none yet)."""
    answered = [a.at for a in list(attempts) if a.status == 201 and a.at - a.seconds > moment]
    return min(answered) - moment if answered else None


def _per_second(attempts, start: float, status: int, seconds: int) -> list[int]:
    counts = [0] * seconds
    for a in attempts:
        second = int(a.at - start)
        if a.status == status and 0 <= second < seconds:
            counts[second] += 1
    return counts


def load_accepted(attempts, start: float, end: float) -> int:
    return sum(1 for a in attempts if a.status == 201 and start < a.at < end)


def _stored_all(engine, token: str, expected: set[tuple[int, int]]) -> bool:
    """True once every (chat, message number) of ``expected`` is stored."""
    _, messages = _stored(engine, token)
    stored = {(c, m) for c, m, _ in messages}
    return expected <= stored
