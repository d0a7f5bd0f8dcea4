"""Scenario ``e2e`` (scenario 3): from the 201 to the row in MySQL, at a paced share of the peak create rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import data
from benchmarks.knobs import E2E_SECONDS, MESSAGE_BODY
from chat_devtools.load.paced import paced_posts, quantile

if TYPE_CHECKING:
    from benchmarks.runner import Bench


def end_to_end(bench: Bench) -> list[dict]:
    """Scenario 3: from the 201 to the row in MySQL, at 50% and 90% of the maximum create throughput."""
    peak = bench.peak_create_rps("e2e-probe")
    out = []
    for share in (0.5, 0.9):
        token, app_id, chats = bench.new_app(f"e2e-{share}", 16)
        paths = bench.message_paths(token, chats)
        rate = peak * share
        bench.log(f"scenario 3: end to end at {share:.0%} of {peak:.0f} req/s = {rate:.0f} req/s, {E2E_SECONDS:.0f}s")
        meter = bench.api.cpu_meter().start()
        run = paced_posts(bench.api.base_url, paths, MESSAGE_BODY, rate=rate, seconds=E2E_SECONDS)
        cores = meter.stop()
        accepted = [a for a in run.answers if a.status == 201]
        expected = len(accepted)
        data.wait_for(
            lambda a=app_id, n=expected: data.count_messages(bench.engine, a) >= n, 120, 0.5, "end-to-end rows"
        )
        written = data.write_times(bench.engine, app_id)
        delays = sorted(written[(chats[a.path_index % len(chats)], a.number)] - a.answered_at for a in accepted)
        point = {
            "share_of_max": share,
            "target_rps": round(rate, 1),
            "achieved_rps": round(run.achieved_rps, 1),
            "requests": len(run.answers),
            "errors": len(run.answers) - len(accepted),
            "late_sends": run.late,
            "client_cpu": round(run.client_cpu, 3),
            "cpu_cores": cores,
            "request_p50_ms": round(run.latency_ms(0.5), 2),
            "request_p99_ms": round(run.latency_ms(0.99), 2),
            "persist_p50_ms": round(1000 * quantile(delays, 0.5), 1),
            "persist_p99_ms": round(1000 * quantile(delays, 0.99), 1),
            "persist_max_ms": round(1000 * delays[-1], 1) if delays else 0.0,
            "persist_cdf_ms": [round(1000 * quantile(delays, q / 100), 1) for q in range(0, 101)],
        }
        bench.log(
            f"  achieved {run.achieved_rps:.0f} req/s, request p99 {point['request_p99_ms']} ms;"
            f" 201 -> row in MySQL p50 {point['persist_p50_ms']} ms, p99 {point['persist_p99_ms']} ms"
        )
        out.append(point)
    return out


def run(bench: Bench) -> dict:
    """The figures under ``e2e``."""
    return {"e2e": end_to_end(bench)}
