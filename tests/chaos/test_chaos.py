"""Chaos: crash every component under a steady stream of creates; nothing accepted may be lost or duplicated.

Each scenario runs a fresh system on private MariaDB, Redis and RabbitMQ instances (chat_devtools.
private_services), drives concurrent creates through the API, injects one fault, and then checks:

- every create answered 201 is in MySQL exactly once, with the number and text it was answered with;
- nothing was stored that nobody sent, no number was answered twice, no answer other than 201/503;
- counts are exact after one count sync; search finds accepted messages as MySQL has them;
- the API and both writers are still running (only the writer a scenario kills is restarted, by the test,
  as Kubernetes would); and the secrets of the deployment are in none of its logs.

Figures (accepted vs persisted, recovery times) go to the chaos results and docs/reliability.md.
``CHAOS_LONG=1`` makes every outage longer and the load run longer (``make chaos``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
import redis
import requests

from chat_common.wire.heartbeats import parse_heartbeat
from chat_common.wire.keys import RedisKeys
from chat_devtools.audit import audit, counts_are_exact, search_agrees
from chat_devtools.load.clients import Workload
from chat_devtools.tcp import TcpProxy
from tests.chaos.conftest import Deployment, deploy, teardown

pytestmark = pytest.mark.slow

LONG = os.environ.get("CHAOS_LONG") == "1"
OUTAGE = 12.0 if LONG else 4.0
STEADY = 10.0 if LONG else 3.0  # load before the fault, and again after recovery
RECOVERY_BOUND = 60.0  # seconds after a fault is cleared by which creates must be accepted again
LEAKS = ("Traceback", "sqlalchemy", "pymysql", "SELECT", "INSERT", 'File "/')

Fault = Callable[[Deployment, Workload], dict]


def _fresh_heartbeats(d: Deployment, queue: str) -> list[int]:
    """Unacknowledged counts the live consumers of ``queue`` reported in the last half second."""
    client = redis.Redis.from_url(d.namespace.settings.redis_url, socket_timeout=2)
    try:
        beats = client.hgetall(RedisKeys(d.namespace.settings.redis_key_prefix).writer_heartbeats)
    finally:
        client.close()
    now, held = time.time(), []
    for field, value in beats.items():
        beat = parse_heartbeat(value)
        if field.decode().startswith(f"{queue}|") and now - beat.at < 0.5:
            held.append(beat.unacked)
    return held


def kill_writer_mid_batch(which: str, queue_suffix: str, times: int = 3) -> Fault:
    def fault(d: Deployment, load: Workload) -> dict:
        process = getattr(d.system, which)
        queue = f"{d.namespace.settings.queue_prefix}.{queue_suffix}"
        held_at_kill = []
        for _ in range(times):
            deadline, held = time.monotonic() + 10, 0
            while time.monotonic() < deadline and not held:  # wait until it holds an unwritten batch
                held = max(_fresh_heartbeats(d, queue), default=0)
                time.sleep(0.01)
            process.kill()
            held_at_kill.append(held)
            time.sleep(0.5)
            process.start()
            time.sleep(1.0)
        return {
            "cleared_at": time.monotonic(),
            "what_happened": f"SIGKILL {times}x while holding {held_at_kill} unacknowledged messages; restarted",
            "mid_batch": all(held_at_kill),
        }

    return fault


def rabbitmq_down(d: Deployment, load: Workload) -> dict:
    down_at = time.monotonic()
    d.infra.rabbitmq.kill()
    time.sleep(OUTAGE)
    restart_at = time.monotonic()
    d.infra.rabbitmq.start()
    back_at = time.monotonic()
    # Confirms can no longer arrive once the broker is dead: a 201 answered later than a moment after the kill
    # would be a promise nobody can keep.
    window = (down_at + 0.3, restart_at)
    in_window = [a for a in load.attempts if window[0] < a.at < window[1]]
    return {
        "cleared_at": back_at,
        "accepted_while_down": sum(a.status == 201 for a in in_window),
        "answered_503_while_down": sum(a.status == 503 for a in in_window),
        "broker_restart_seconds": round(back_at - restart_at, 1),
        "what_happened": f"RabbitMQ SIGKILLed for {OUTAGE:.0f} s + {back_at - restart_at:.0f} s to boot; "
        "creates answered 503 meanwhile",
    }


def redis_restart(d: Deployment, load: Workload) -> dict:
    down_at = time.monotonic()
    d.infra.redis.kill()  # no persistence: every key is gone
    time.sleep(OUTAGE / 2)
    d.infra.redis.start()
    back_at = time.monotonic()
    return {"cleared_at": back_at, "down_at": down_at,
            "what_happened": f"Redis SIGKILLed and restarted empty after {OUTAGE / 2:.0f} s"}  # fmt: skip


def mariadb_down(d: Deployment, load: Workload) -> dict:
    down_at = time.monotonic()
    d.infra.mariadb.kill()
    time.sleep(1.0)
    probes = {
        "read": requests.get(f"{load.url}/chats/1", timeout=15),
        "search": requests.get(f"{load.url}/chats/1/messages/search", params={"query": "chaos"}, timeout=15),
        "list": requests.get(f"{load.url}/chats", timeout=15),
    }
    time.sleep(max(OUTAGE - 1.0, 0))
    restart_at = time.monotonic()
    d.infra.mariadb.start()
    back_at = time.monotonic()
    return {
        "cleared_at": back_at,
        "accepted_while_down": load.accepted_between(down_at, restart_at),
        "probes": {k: (r.status_code, r.text[:80]) for k, r in probes.items()},
        "what_happened": f"MariaDB SIGKILLed for {OUTAGE:.0f} s (crash recovery on restart); creates kept being "
        "accepted into RabbitMQ, reads and search answered 503",
    }


def _check_logs(d: Deployment, extra: str = "") -> list[str]:
    """Names of the secrets found in the deployment's logs (should be none)."""
    logs = "".join(p.read_text(errors="replace") for p in d.system.log_dir.glob("*.log")) + extra
    return [name for name, value in d.secrets.items() if value in logs]


def run_scenario(d: Deployment, results, name: str, fault: Fault) -> tuple[dict, list]:
    """Load, fault, load again, then audit; returns the recorded row and every attempt."""
    api = d.api
    token = api.new_application(f"chaos {name}")
    seed = {api.new_chat(token, f"seed {i}"): f"seed {i}" for i in range(3)}
    load = Workload(d.system.base_url, token, list(seed), label=name.split()[0]).start()
    time.sleep(STEADY)
    fault_at = time.monotonic()
    details = fault(d, load)
    # Under load until the API accepts creates again (at most RECOVERY_BOUND s), then for a while more.
    deadline = time.monotonic() + RECOVERY_BOUND
    while load.first_accepted_after(details["cleared_at"]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(STEADY)
    attempts = load.stop()
    figures = audit(d.engine, token, attempts, seed)
    sync = d.system.sync_counts()
    mismatched_counts = counts_are_exact(d.engine, token)
    search = search_agrees(d.system.base_url, d.engine, token, attempts)
    alive = {p.name: p.popen.poll() is None for p in (d.system.api, d.system.chat_writer, d.system.message_writer)}
    ready = requests.get(f"{d.system.base_url}/readyz", timeout=10).status_code
    recovered = load.first_accepted_after(details["cleared_at"])
    leaked = _check_logs(d, sync.stdout.decode() + sync.stderr.decode())
    row = results.add(
        fault=name,
        what_happened=details.pop("what_happened"),
        attempts=figures.attempts,
        accepted=figures.accepted,
        persisted=figures.persisted,
        lost=figures.lost,
        duplicated=figures.duplicated + figures.numbers_answered_twice,
        answered_503=figures.answered_503,
        no_answer=figures.no_answer,
        stored_after_503=figures.stored_after_503,
        invented=figures.invented,
        other_statuses=figures.other_status,
        first_201_after_recovery_s=None if recovered is None else round(recovered, 2),
        fault_to_recovery_s=round(details["cleared_at"] - fault_at, 1),
        backlog_drained_s=figures.seconds_to_persist,
        counts_exact=not mismatched_counts,
        search_agrees=not search,
        services_recovered=all(alive.values()) and ready == 200,
        secrets_in_logs=leaked,
        details=details,
        examples=figures.examples,
        outcome="fail",
    )
    assert figures.accepted > 50, f"too little load got through: {figures}"
    assert figures.lost == 0, figures.examples
    assert figures.duplicated == 0 and figures.numbers_answered_twice == 0, figures.examples
    assert figures.invented == 0, figures.examples
    assert figures.other_status == {}, f"answers other than 201/503: {figures.other_status}"
    assert not mismatched_counts, mismatched_counts
    assert not search, search
    assert all(alive.values()), alive
    assert ready == 200
    assert recovered is not None, f"no create accepted within {RECOVERY_BOUND:.0f} s of the fault being cleared"
    assert not leaked, f"secrets in logs: {leaked}"
    return row, attempts


def test_message_writer_killed_mid_batch(deployment, chaos_results):
    row, _ = run_scenario(deployment, chaos_results, "message-writer SIGKILL mid-batch",
                       kill_writer_mid_batch("message_writer", "messages"))  # fmt: skip
    assert row["details"]["mid_batch"], "the writer never held a batch when it was killed"
    row["outcome"] = "pass"


def test_chat_writer_killed_mid_batch(deployment, chaos_results):
    row, _ = run_scenario(deployment, chaos_results, "chat-writer SIGKILL mid-batch",
                       kill_writer_mid_batch("chat_writer", "chats"))  # fmt: skip
    row["outcome"] = "pass"


def test_rabbitmq_down(deployment, chaos_results):
    row, _ = run_scenario(deployment, chaos_results, "RabbitMQ down", rabbitmq_down)
    assert row["details"]["accepted_while_down"] == 0, "a 201 was answered while no broker could confirm it"
    assert row["details"]["answered_503_while_down"] > 0, "the API did not answer 503 during the outage"
    row["outcome"] = "pass"


def test_redis_restarted_empty(deployment, chaos_results):
    row, attempts = run_scenario(deployment, chaos_results, "Redis restart (all keys lost)", redis_restart)
    # Numbering continued after the loss: every number answered afterwards is above every earlier one.
    attempts = [a for a in attempts if a.status == 201]
    down_at, back_at = row["details"]["down_at"], row["details"]["cleared_at"]
    for kind, chat in {(a.kind, a.chat) for a in attempts}:
        before = [a.number for a in attempts if (a.kind, a.chat) == (kind, chat) and a.at < down_at]
        after = [a.number for a in attempts if (a.kind, a.chat) == (kind, chat) and a.at > back_at]
        if before and after:
            assert min(after) > max(before), (kind, chat)
    row["outcome"] = "pass"


def test_mariadb_down(deployment, chaos_results):
    row, _ = run_scenario(deployment, chaos_results, "MariaDB down (and MySQL search with it)", mariadb_down)
    probes = row["details"]["probes"]
    for what, (status, body) in probes.items():
        assert status == 503, (what, status, body)
        assert not any(leak in body for leak in LEAKS), body
    assert row["details"]["accepted_while_down"] > 0, "creates should keep being accepted while MySQL is down"
    row["outcome"] = "pass"


@pytest.mark.skipif(
    not os.environ.get("CHAOS_ELASTICSEARCH_URL"),
    reason="no Elasticsearch on this machine: set CHAOS_ELASTICSEARCH_URL (e.g. http://127.0.0.1:9200) to run "
    "the search-backend outage against one; the MySQL search backend's outage is the MariaDB scenario",
)
def test_elasticsearch_unavailable(infra, chaos_results):
    host, _, port = os.environ["CHAOS_ELASTICSEARCH_URL"].split("//", 1)[1].rstrip("/").partition(":")
    proxy = TcpProxy(host, int(port or 9200))
    d = deploy(infra, elasticsearch_url=f"http://127.0.0.1:{proxy.port}")
    try:

        def elasticsearch_down(d: Deployment, load: Workload) -> dict:
            proxy.block()
            time.sleep(OUTAGE)
            proxy.unblock()
            return {"cleared_at": time.monotonic(), "what_happened": f"Elasticsearch unreachable for {OUTAGE:.0f} s"}

        row, _ = run_scenario(d, chaos_results, "Elasticsearch unreachable", elasticsearch_down)
        row["outcome"] = "pass"
    finally:
        teardown(d)
        proxy.close()


def test_tcp_proxy_cuts_and_restores_a_service(infra):
    """The proxy the Elasticsearch scenario relies on, checked here against the private Redis."""
    proxy = TcpProxy("127.0.0.1", infra.redis.port)
    client = redis.Redis(port=proxy.port, password=infra.redis.password, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert client.ping()
        proxy.block()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.unblock()
        assert client.ping()
    finally:
        client.close()
        proxy.close()
