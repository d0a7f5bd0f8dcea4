"""Scenario ``rabbit_cluster``: creates on a 3-node RabbitMQ cluster against one node, in the same run
(what replicating every message to a quorum costs a create).

Every broker here is private (chat_devtools.rabbit_cluster: own node names, ports, data dirs, cookie; never the
shared broker on 5672), so the single node and the cluster run the same RabbitMQ configuration on the same
machine. Three configurations, each a fresh namespace with the API and the writers started as real processes:

- ``single_classic``: one node, ``QUEUE_TYPE=classic`` (the former queues);
- ``single_quorum``: one node, ``QUEUE_TYPE=quorum`` (the default; a quorum queue of one member);
- ``cluster3_quorum``: three nodes, quorum queues of three members, ``RABBITMQ_URL`` listing the three nodes.

The two quorum configurations are also measured with coalesced publishing off (``PUBLISH_COALESCE=false``:
one AMQP message per create, as before issue #27), as ``single_quorum_uncoalesced`` and ``cluster3_quorum_uncoalesced``.

Each point is POST …/messages at c=64 (the headline load; the median of ``BENCH_REPEATS`` wrk runs), with the CPU
of the broker's Erlang VMs (all nodes, summed), the API and the writers per create. Keys: ``create_message_rps_
rabbit_cluster3`` and ``ratio_cluster_vs_single`` (cluster over one node, both quorum), plus broker CPU per create
for each configuration — which is what docs/scaling.md and the choice of the default queue type rest on.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.knobs import MESSAGE_BODY, PRODUCTION
from benchmarks.system import CpuMeter, PeakMemory, Stack
from chat_devtools.http import Api
from chat_devtools.load.wrk import HttpResult, wrk
from chat_devtools.namespace import Namespace
from chat_devtools.rabbit_cluster import RabbitCluster, unavailable_reason


@dataclass(frozen=True)
class Conditions:
    """How every broker configuration is measured (the same for each, so that their figures compare)."""

    log_dir: Path
    memory: PeakMemory
    workers: int
    connections: int
    seconds: float
    repeats: int
    log: Callable[[str], None]


def _measure(
    stack: Stack, paths: list[str], broker_pids: list[int], connections: int, seconds: float, repeats: int
) -> dict:
    """Median-by-rps wrk run with the CPU of broker, API and writers per create."""
    runs = []
    for _ in range(repeats):
        # "rabbitmq" replaces the shared broker's PIDs with this configuration's nodes (the shared one is "other").
        meter = CpuMeter({"rabbitmq": broker_pids, "api": stack.api_pids(), "writers": stack.writer_pids()}).start()
        result: HttpResult = wrk(
            stack.base_url, paths, connections=connections, seconds=seconds, method="POST", body=MESSAGE_BODY
        )
        runs.append((result, meter.stop(result.client_cpu * result.seconds)))
    runs.sort(key=lambda run: run[0].rps)
    result, cores = runs[len(runs) // 2]
    point = result.as_dict()
    point["cpu_cores"] = cores
    point["rps_runs"] = [round(r.rps, 1) for r, _ in runs]
    if result.rps:
        point["cpu_us_per_request"] = {role: round(c / result.rps * 1e6, 1) for role, c in cores.items()}
    return point


def _configuration(
    label: str,
    urls: str,
    queue_type: str,
    broker_pids: list[int],
    c: Conditions,
    coalesce: bool = True,
) -> dict:
    """One broker configuration: a namespace and stack on it, 16 chats, the median wrk point with CPU per create."""
    namespace = Namespace.create(
        "bench_rabbit",
        rabbitmq_url=urls,
        queue_type=queue_type,
        publish_coalesce=coalesce,
        publish_timeout_seconds=PRODUCTION.publish_timeout_seconds,
        writer_max_wait_seconds=PRODUCTION.writer_max_wait_seconds,
        writer_retry_delays_seconds=PRODUCTION.writer_retry_delays_seconds,
    )
    stack = Stack(namespace, c.log_dir / f"rabbit-{label}", c.memory, workers=c.workers).start()
    client = Api(stack.base_url)
    try:
        token = client.new_application(f"rabbit {label}")
        chats = [client.new_chat(token, f"chat {i}") for i in range(16)]
        client.wait_chat(token, chats[-1], timeout=30)
        paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        wrk(stack.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)  # warm-up
        point = _measure(stack, paths, broker_pids, c.connections, c.seconds, c.repeats)
        point["queue_type"] = queue_type
        point["nodes"] = urls.count(",") + 1
        us = point.get("cpu_us_per_request", {})
        c.log(
            f"  {label:<16} {point['rps']:8.0f} req/s  p99 {point['p99_ms']:7.1f} ms  errors {point['errors']}"
            f" non-2xx {point['non_2xx']}  broker {us.get('rabbitmq', 0):.0f} us/create"
            f" ({point['cpu_cores']['rabbitmq']:.2f} cores), API {us.get('api', 0):.0f} us/create"
        )
        return point
    finally:
        client.session.close()
        stack.stop()
        namespace.destroy()


def run(c: Conditions) -> dict:
    """Single node (classic, quorum) and a 3-node cluster (quorum), one after the other; the figures and ratios."""
    reason = unavailable_reason()
    if reason:
        c.log(f"  skipped: {reason}")
        return {"skipped": reason}
    out: dict = {"connections": c.connections}
    started = time.monotonic()
    with RabbitCluster(c.log_dir / "rabbit-single", size=1) as single:
        pids = [p for p in (single.nodes[0].server_pid,) if p]
        out["single_classic"] = _configuration("single_classic", single.urls, "classic", pids, c)
        out["single_quorum"] = _configuration("single_quorum", single.urls, "quorum", pids, c)
        out["single_quorum_uncoalesced"] = _configuration(
            "single_quorum_uncoalesced", single.urls, "quorum", pids, c, coalesce=False
        )
    booted = time.monotonic()
    with RabbitCluster(c.log_dir / "rabbit-cluster3", size=3) as cluster:
        out["cluster_boot_seconds"] = round(time.monotonic() - booted, 1)
        pids = [p for p in (node.server_pid for node in cluster.nodes) if p]
        out["cluster3_quorum"] = _configuration("cluster3_quorum", cluster.urls, "quorum", pids, c)
        out["cluster3_quorum_uncoalesced"] = _configuration(
            "cluster3_quorum_uncoalesced", cluster.urls, "quorum", pids, c, coalesce=False
        )
    out["seconds"] = round(time.monotonic() - started, 1)
    for broker in (single, cluster):  # keep the nodes' logs, drop their data (the queues' Raft logs)
        for node in broker.nodes:
            shutil.rmtree(node.dir / "mnesia", ignore_errors=True)

    def us(key: str, role: str = "rabbitmq") -> float | None:
        return (out[key].get("cpu_us_per_request") or {}).get(role)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    out["create_message_rps_rabbit_cluster3"] = out["cluster3_quorum"]["rps"]
    out["create_message_rps_rabbit_single"] = out["single_quorum"]["rps"]
    out["create_message_rps_rabbit_single_classic"] = out["single_classic"]["rps"]
    out["ratio_cluster_vs_single"] = ratio(out["cluster3_quorum"]["rps"], out["single_quorum"]["rps"])
    out["broker_cpu_us_per_create_cluster3"] = us("cluster3_quorum")
    out["broker_cpu_us_per_create_single"] = us("single_quorum")
    out["broker_cpu_us_per_create_single_classic"] = us("single_classic")
    out["ratio_broker_cpu_cluster_vs_single"] = ratio(us("cluster3_quorum"), us("single_quorum"))
    out["ratio_broker_cpu_quorum_vs_classic"] = ratio(us("single_quorum"), us("single_classic"))
    out["ratio_quorum_vs_classic_rps"] = ratio(out["single_quorum"]["rps"], out["single_classic"]["rps"])
    # Issue #27's A/B: the same two configurations with one AMQP message per create.
    out["broker_cpu_us_per_create_single_uncoalesced"] = us("single_quorum_uncoalesced")
    out["broker_cpu_us_per_create_cluster3_uncoalesced"] = us("cluster3_quorum_uncoalesced")
    out["ratio_cluster_vs_single_uncoalesced"] = ratio(
        out["cluster3_quorum_uncoalesced"]["rps"], out["single_quorum_uncoalesced"]["rps"]
    )
    out["create_message_rps_rabbit_single_uncoalesced"] = out["single_quorum_uncoalesced"]["rps"]
    out["create_message_rps_rabbit_cluster3_uncoalesced"] = out["cluster3_quorum_uncoalesced"]["rps"]
    return out


def main() -> None:
    """``python -m benchmarks.cluster``: this scenario alone, printed as JSON (no results file is touched)."""
    import json
    import os
    import tempfile

    log_dir = Path(tempfile.mkdtemp(prefix="bench-rabbit-"))
    started = time.monotonic()
    out = run(
        Conditions(
            log_dir=log_dir,
            memory=PeakMemory(),
            workers=int(os.environ.get("GUNICORN_WORKERS", "2")),
            connections=64,
            seconds=float(os.environ.get("BENCH_SECONDS", "5")),
            repeats=int(os.environ.get("BENCH_REPEATS", "3")),
            log=lambda m: print(f"[{time.monotonic() - started:6.1f}s] {m}", flush=True),
        )
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
