"""The system on a 3-node RabbitMQ cluster under create load: SIGKILL the node that leads a queue, restart it.

Every scenario runs the real API and writers in a namespace of its own on the private cluster (quorum queues, the
default), the API with every node's URL (``RABBITMQ_URL`` as a comma-separated list), and sends a steady stream of
message creates through the API (tests/chaos/workload.py, audited the same way).

1. **The messages queue's leader** is killed, kept down, then restarted with its data; the writers reach the
   cluster through one address in front of the nodes (the TCP balancer, as a Kubernetes Service would be).
   Checked: creates answer 201 again within a few seconds of the kill, *while the node is still down* (with classic
   queues, none was accepted until the queues' node came back), chat creates too; the writers resume on another
   node (everything accepted so far is stored before the node is restarted); the node rejoins.
2. **Retry tiers under failures**: the writers retry a fifth of first and second attempts on purpose
   (``TEST_FAULT_WRITER_RETRY_RATIO``), so the 1 s and 5 s tiers keep filling, and two message-writers drain them
   side by side (one with the node list, one through the balancer). The leader of the messages work queue is killed
   and restarted, then the leader of the 1 s retry tier. Checked: every create answered 201 is stored exactly once
   within 30 s of the load's end; no writer held a tier message more than ``MARGIN`` past its due time (their own
   reports, sampled every 0.25 s); the tiers are empty at the end and ``/status`` says so. With the TTL tiers of
   earlier versions, this is where hundreds of accepted messages stayed in ``<prefix>.messages.retry.1s``.

Both: nothing accepted lost or stored twice, no answer but 201/503, every process still running. Figures go to
the cluster results (docs/reliability.md, "Broker cluster failover").
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field

import pytest
import redis
import requests

from chat_common.clients.db import make_engine
from chat_common.wire.keys import RedisKeys
from chat_common.wire.topology import Topology
from chat_common.writing.retry_tiers import parse_overdue_report
from chat_devtools.audit import Figures, audit, stored_creates
from chat_devtools.http import Api, wait_for
from chat_devtools.load.clients import Attempt, Workload
from chat_devtools.namespace import Namespace
from chat_devtools.processes import Process, System
from chat_devtools.rabbit_cluster import RabbitCluster, RabbitNode
from chat_devtools.results import Results
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow

STEADY = 3.0  # load before each kill and after the last restart
RESUME_BOUND = 10.0  # a create must be accepted again this soon after a kill (2 cores, shared with CI)
DOWN_AT_LEAST = 4.0  # a killed node stays down at least this long (longer while the checks run)
STORED_WITHIN = 30.0  # every accepted create is in MySQL this soon after the load's end
MARGIN = 10.0  # a retry-tier message may be held at most this long past its due time (RETRY_OVERDUE_MARGIN_SECONDS)
FAULT_RATIO = 0.2  # of first and second attempts, retried on purpose


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """Longest stretch in [start, end] without a 201."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


@dataclass
class Run:
    """One scenario's system on the cluster, its load and what it observed."""

    cluster: RabbitCluster
    namespace: Namespace
    system: System
    token: str = ""
    seed: dict[int, str] = field(default_factory=dict)
    own: list[Attempt] = field(default_factory=list)  # creates the test sends itself, audited with the load's
    load: Workload | None = None
    extra: list[Process] = field(default_factory=list)

    @classmethod
    def start(cls, cluster: RabbitCluster, label: str, extra_env: dict | None = None, balanced_writers=False) -> Run:
        """Start the system; ``balanced_writers``: the writers reach the cluster through the balancer only."""
        namespace = Namespace.create(label, rabbitmq_url=cluster.urls)
        assert namespace.settings.queue_type == "quorum"
        system = System(namespace, LOG_ROOT / namespace.name, api_workers=2, extra_env=extra_env)
        if balanced_writers:
            for writer in (system.chat_writer, system.message_writer):
                writer.env = {**system.env, "RABBITMQ_URL": cluster.balanced_url}  # one Service address
        run = cls(cluster, namespace, system)
        system.start()
        api = Api(system.base_url)
        run.token = api.new_application(f"cluster {label}")
        run.seed = {api.new_chat(run.token, f"seed {i}"): f"seed {i}" for i in range(3)}
        for number in run.seed:
            api.wait_chat(run.token, number)
            # Numbering loads the chat's counter now, not under the kill.
            text = f"warm-up {number}"
            run.own.append(Attempt("message", text, number, 201, api.new_message(run.token, number, text), 0.0, 0.0))
        return run

    def start_load(self) -> Workload:
        # Messages to the seeded chats only: the first message to a new chat reads its last number from MySQL (the
        # shared server here, whose stalls would be measured instead of the broker's failover).
        self.load = Workload(self.system.base_url, self.token, list(self.seed), threads=4, chat_every=10**9)
        return self.load.start()

    def kill_and_restart(self, node: RabbitNode, while_down=None) -> dict:
        """SIGKILL ``node`` under the load, wait for creates to resume, keep it down, restart it; the figures."""
        killed_at = time.monotonic()
        node.kill()
        resumed_after = wait_for(
            lambda: _first_accepted_sent_after(self.load.attempts, killed_at),
            timeout=RESUME_BOUND + 20,
            what="a create sent after the kill and accepted",
        )
        extra = while_down(killed_at) if while_down else {}
        time.sleep(max(DOWN_AT_LEAST - (time.monotonic() - killed_at), 0))
        restarted_at = time.monotonic()
        node.start().wait_ready()
        rejoined_after = time.monotonic() - restarted_at
        wait_for(lambda: node.node in self.cluster.running_nodes(), timeout=30, what="the restarted node rejoined")
        accepted = [a.at for a in list(self.load.attempts) if a.status == 201]
        return {
            "node": node.node,
            "first_201_sent_after_kill_s": round(resumed_after, 2),
            "longest_gap_without_201_while_down_s": round(_longest_gap(accepted, killed_at, restarted_at), 2),
            "accepted_while_node_down": sum(1 for t in accepted if killed_at < t < restarted_at),
            "node_down_s": round(restarted_at - killed_at, 1),
            "node_reboot_s": round(rejoined_after, 1),
            **extra,
        }

    def stop_load(self) -> list[Attempt]:
        attempts, self.load = self.load.stop(), None
        return [*attempts, *self.own]

    def alive(self) -> dict[str, bool]:
        processes = (self.system.api, self.system.chat_writer, self.system.message_writer, *self.extra)
        return {p.name: p.popen.poll() is None for p in processes}

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        for process in self.extra:
            process.stop()
        self.system.stop()
        for node in self.cluster.nodes:  # the namespace's queues live on the cluster: delete them there
            if not node.running:
                node.start().wait_ready()
        self.namespace.destroy()


def _figures_row(name: str, happened: str, figures: Figures, attempts: list[Attempt], kills: list[dict]) -> dict:
    return {
        "scenario": name,
        "what_happened": happened,
        "accepted": figures.accepted,
        "persisted": figures.persisted,
        "lost": figures.lost,
        "duplicated": figures.duplicated + figures.numbers_answered_twice,
        "answered_503": figures.answered_503,
        "longest_gap_s": max(k["longest_gap_without_201_while_down_s"] for k in kills),
        "first_201_after_kill_s": max(k["first_201_sent_after_kill_s"] for k in kills),
        "stored_within_s": figures.seconds_to_persist,
        "kills": kills,
        "other_status": figures.other_status,
        "invented": figures.invented,
    }


def _check(figures: Figures, run: Run) -> None:
    assert figures.accepted > 50, figures
    assert figures.lost == 0, figures.examples
    assert figures.duplicated == 0 and figures.numbers_answered_twice == 0, figures.examples
    assert figures.invented == 0, figures.examples
    assert figures.other_status == {}, f"answers other than 201/503: {figures.other_status}"
    alive = run.alive()
    assert all(alive.values()), alive
    assert requests.get(f"{run.system.base_url}/readyz", timeout=10).status_code == 200


def test_killing_the_messages_queue_leader_loses_nothing_and_creates_resume(
    healthy_cluster: RabbitCluster, cluster_results: Results
):
    cluster = healthy_cluster
    run = Run.start(cluster, "cluster", balanced_writers=True)
    engine = make_engine(run.namespace.settings.database_url, pool_size=2)
    row = cluster_results.add(scenario="messages queue leader SIGKILLed", outcome="fail")
    try:
        queue = f"{run.namespace.settings.queue_prefix}.messages"
        queues = {q["name"]: q for q in cluster.queues()}
        assert queues[queue]["type"] == "quorum" and len(queues[queue]["members"]) == 3, queues[queue]
        leader = cluster.leader_of(queue)
        chats_leader = cluster.leader_of(f"{run.namespace.settings.queue_prefix}.chats")
        run.start_load()
        time.sleep(STEADY)

        def while_down(killed_at: float) -> dict:
            # The chats queue (led by the same node here, or not): chat creates resume too, though the load
            # sends none. A publisher that kept a refusing channel for it answered 503 here for 25 s and more.
            chat_created = wait_for(lambda: _create_chat(run), timeout=RESUME_BOUND, what="a chat after the kill")
            # The writers resume on a surviving node: everything accepted until now is stored with the node down.
            checkpoint = time.monotonic()
            accepted = {(a.chat, a.number) for a in list(run.load.attempts) if a.status == 201 and a.kind == "message"}
            wait_for(lambda: _stored_all(engine, run.token, accepted), timeout=30, what="accepted, node down")
            assert not leader.running
            new_leader = cluster.leader_of(queue)
            assert new_leader is not leader
            return {
                "chat_created_after_kill_s": round(run.own[-1].at - killed_at, 2),
                "chat_number": chat_created,
                "chats_queue_led_by_the_killed_node": chats_leader is leader,
                "stored_while_node_down": len(accepted),
                "checkpoint_after_kill_s": round(checkpoint - killed_at, 1),
                "new_leader": new_leader.node,
            }

        kill = run.kill_and_restart(leader, while_down)
        time.sleep(STEADY)
        attempts = run.stop_load()
        figures = audit(engine, run.token, attempts, run.seed)
        row.update(_figures_row("messages queue leader SIGKILLed", _happened([kill]), figures, attempts, [kill]))
        (LOG_ROOT / f"{run.namespace.name}-rabbit-failover.json").write_text(json.dumps(row, indent=2))
        print("rabbit cluster failover:", json.dumps(row))
        _check(figures, run)
        assert kill["first_201_sent_after_kill_s"] < RESUME_BOUND, row
        assert kill["accepted_while_node_down"] > 0, row
        row["outcome"] = "pass"
    finally:
        run.stop()
        engine.dispose()


class TierWatch:
    """Samples, every 0.25 s, the writers' reports of how late their held retry-tier messages are, and the size of
    the deferral ledger (how many retried messages are on their way)."""

    def __init__(self, namespace: Namespace) -> None:
        self.client = redis.Redis.from_url(namespace.settings.redis_url, socket_timeout=2)
        self.keys = RedisKeys(namespace.settings.redis_key_prefix)
        self.overdue_max = 0.0
        self.deferred_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tier-watch", daemon=True)

    def __enter__(self) -> TierWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                now = time.time()
                reports = [parse_overdue_report(v) for v in self.client.hgetall(self.keys.retry_overdue).values()]
                fresh = [seconds for seconds, at in reports if now - at < 2]
                self.overdue_max = max([self.overdue_max, *fresh])
                self.deferred_max = max(self.deferred_max, self.client.zcard(self.keys.deferred))
            except redis.RedisError:
                continue


def _tiers_if_empty(run: Run) -> dict[str, int] | None:
    """Messages (ready or held by a writer) in every retry tier of the messages queue, once none has any."""
    tiers = set(Topology.from_settings(run.namespace.settings).messages.retry_queues)
    left = {q["name"]: q["messages"] for q in run.cluster.queues() if q["name"] in tiers}
    return None if any(left.values()) or set(left) != tiers else left


def test_retry_tiers_return_every_message_on_time_through_leader_kills(
    healthy_cluster: RabbitCluster, cluster_results: Results
):
    cluster = healthy_cluster
    env = {"TEST_FAULT_WRITER_RETRY_RATIO": str(FAULT_RATIO), "RETRY_OVERDUE_MARGIN_SECONDS": str(MARGIN)}
    run = Run.start(cluster, "cltier", env)
    second = Process(
        "message-writer-2",
        run.system.message_writer.argv,
        {**run.system.env, "RABBITMQ_URL": cluster.balanced_url},
        run.system.log_dir,
    ).start()
    run.extra.append(second)
    engine = make_engine(run.namespace.settings.database_url, pool_size=2)
    name = "messages queue leader, then a retry tier's leader SIGKILLed; writers retry 20 % on purpose"
    row = cluster_results.add(scenario=name, outcome="fail")
    prefix = run.namespace.settings.queue_prefix
    work, tier = f"{prefix}.messages", f"{prefix}.messages.delay.1s"
    try:
        with TierWatch(run.namespace) as watch:
            run.start_load()
            time.sleep(STEADY)
            kills = [run.kill_and_restart(cluster.leader_of(work))]
            time.sleep(STEADY)
            kills.append(run.kill_and_restart(cluster.leader_of(tier)))
            time.sleep(STEADY)
            attempts = run.stop_load()
            load_end = time.monotonic()
            figures = audit(engine, run.token, attempts, run.seed, timeout=STORED_WITHIN)
            stored_within = time.monotonic() - load_end
            tiers_left = wait_for(
                lambda: _tiers_if_empty(run),
                timeout=max(STORED_WITHIN - (time.monotonic() - load_end), 1),
                interval=0.5,
                what="the retry tiers empty",
            )
            # /status shows the queues from a snapshot read in the background; while nodes were down those reads
            # failed, and it says "unknown" until one succeeds again.
            status = wait_for(
                lambda: _status_with_queues_read(run),
                timeout=30,
                interval=0.5,
                what="/status reading the queues again after the restarts",
            )
        row.update(_figures_row(name, _happened(kills), figures, attempts, kills))
        row.update(
            retry_overdue_max_s=round(watch.overdue_max, 2),
            retried_in_flight_max=watch.deferred_max,
            stored_within_s=round(stored_within, 2),
            tiers_at_end=tiers_left,
            status_retry_tiers=status["checks"].get("retry_tiers"),
        )
        (LOG_ROOT / f"{run.namespace.name}-retry-tiers.json").write_text(json.dumps(row, indent=2))
        print("retry tiers on a cluster:", json.dumps(row))
        _check(figures, run)
        assert stored_within <= STORED_WITHIN, row
        assert watch.deferred_max > 20, f"the tiers hardly filled: {row}"  # the test proves nothing otherwise
        assert watch.overdue_max <= MARGIN, row
        assert status["checks"]["retry_tiers"] == "ok", status
        row["outcome"] = "pass"
    finally:
        run.stop()
        engine.dispose()


def _status_with_queues_read(run: Run) -> dict | None:
    status = requests.get(f"{run.system.base_url}/status", timeout=10).json()
    return status if status["checks"].get("retry_tiers") != "unknown" else None


def _happened(kills: list[dict]) -> str:
    return "; ".join(
        f"{k['node'].split('@')[0]} SIGKILLed for {k['node_down_s']} s + {k['node_reboot_s']} s to boot" for k in kills
    )


def _create_chat(run: Run) -> int | None:
    """The number of a chat created now, or None when the API refused (503) or did not answer."""
    name = f"after the kill {len(run.own)}"
    try:
        response = requests.post(
            f"{run.system.base_url}/applications/{run.token}/chats", json={"name": name}, timeout=5
        )
        status = response.status_code
    except requests.RequestException:
        status = 0
    number = response.json()["chat_number"] if status == 201 else None
    run.own.append(Attempt("chat", name, None, status, number, time.monotonic(), 0.0))
    return number


def _first_accepted_sent_after(attempts, moment: float) -> float | None:
    """Seconds from ``moment`` to the 201 of the first create *sent* after it (None: none yet)."""
    answered = [a.at for a in list(attempts) if a.status == 201 and a.at - a.seconds > moment]
    return min(answered) - moment if answered else None


def _stored_all(engine, token: str, expected: set[tuple[int, int]]) -> bool:
    """True once every (chat, message number) of ``expected`` is stored."""
    _, messages = stored_creates(engine, token)
    stored = {(c, m) for c, m, _ in messages}
    return expected <= stored
