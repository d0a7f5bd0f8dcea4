"""Scenario ``coalescing`` (issue #27): message creates with coalesced publishing off and on, same stack, same run.

The API is restarted with ``PUBLISH_COALESCE=false`` and then ``true`` (the default); each variant is measured at c=1
(latency: nothing to coalesce, nothing may get worse) and at c=64 (the headline load), the median of
``BENCH_REPEATS`` wrk runs, with the CPU per create of every component (API, broker, writers, Redis, MySQL, the load
generator) and the mean bundle size the API sent (its ``chat_api_publish_bundle_size`` histogram). The broker's cost
on one private node and on a 3-node cluster, with and without coalescing, is in the ``rabbit_cluster`` scenario.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import requests

from benchmarks.knobs import HEADLINE_CONCURRENCY, MESSAGE_BODY, REPEATS
from chat_devtools.load.wrk import wrk

if TYPE_CHECKING:
    from benchmarks.runner import Bench

VARIANTS = {"uncoalesced": "false", "coalesced": "true"}


def bundle_totals(base_url: str, queue: str) -> tuple[float, float]:
    """(creates, AMQP messages) the API published to ``queue`` so far, from its bundle-size histogram."""
    time.sleep(1.5)  # the API hands its metric sums to prometheus_client once a second (chat_api.metrics_buffer)
    text = requests.get(f"{base_url}/metrics", timeout=5).text
    totals = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in totals:
            if line.startswith(f"chat_api_publish_bundle_size_{kind}{{") and f'queue="{queue}"' in line:
                totals[kind] += float(line.split()[-1])
    return totals["sum"], totals["count"]


def run(bench: Bench) -> dict:
    """Each variant at c=1 and c=64; the ratios under ``coalescing``."""
    token, _, chats = bench.new_app("coalescing", 16)
    paths = bench.message_paths(token, chats)
    queue = bench.topology.messages.name
    out: dict = {}
    post = {"method": "POST", "body": MESSAGE_BODY, "repeats": REPEATS}
    try:
        for variant, flag in VARIANTS.items():
            bench.log(f"coalesced publishing: {variant} (PUBLISH_COALESCE={flag})")
            bench.api.restart_api(PUBLISH_COALESCE=flag)
            wrk(bench.api.base_url, paths, connections=16, seconds=2, method="POST", body=MESSAGE_BODY)  # warm-up
            bench.wait_queues_empty()
            point_c1 = bench.measure(bench.api, f"create, {variant}", paths, 1, **post)
            creates_before, messages_before = bundle_totals(bench.api.base_url, queue)
            point = bench.measure(bench.api, f"create, {variant}", paths, HEADLINE_CONCURRENCY, **post)
            creates, messages = bundle_totals(bench.api.base_url, queue)
            sent = messages - messages_before
            point["creates_per_amqp_message"] = round((creates - creates_before) / sent, 2) if sent else None
            bench.log(f"  {point['creates_per_amqp_message']} creates per AMQP message at c={HEADLINE_CONCURRENCY}")
            out[variant] = {"c1": point_c1, f"c{HEADLINE_CONCURRENCY}": point}
            bench.wait_queues_empty()
    finally:
        bench.api.restart_api(PUBLISH_COALESCE="true")
    on, off = out["coalesced"][f"c{HEADLINE_CONCURRENCY}"], out["uncoalesced"][f"c{HEADLINE_CONCURRENCY}"]
    out["ratio_create_coalesced_vs_not"] = round(on["rps"] / off["rps"], 3) if off["rps"] else None
    return {"coalescing": out}
