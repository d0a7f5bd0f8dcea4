"""`python -m benchmarks`: every scenario (benchmarks/scenarios, a module each) over one runner (runner.py).

Every scenario runs in a fresh namespace (database, Redis prefix, queue names; chat_devtools.namespace) with the
production defaults of the writers, against gunicorn and the writers started as real processes. Knobs
(environment; benchmarks/knobs.py):

- ``BENCH_SECONDS`` (5): length of each wrk run; ``BENCH_CONCURRENCY`` ("1,16,64,256").
- ``BENCH_REPEATS`` (3): runs per point of scenario 1, its ceiling and the naive baseline (the median is kept).
- ``BENCH_DRAIN_MESSAGES`` (100000): upserts pre-filled for each writer drain; ``BENCH_DRAIN_BUNDLE`` (32): upserts
  per bundle in the drain with bundles (each drain is run with bundles and with single messages).
- ``BENCH_GROWTH_ROWS`` (1000000): message rows in the table before the growth scenarios.
- ``BENCH_E2E_SECONDS`` (15): length of each paced end-to-end run.
- ``BENCH_METRICS_ITERATIONS`` (200000): creates' metric calls timed by the ``metrics_cost`` scenario.
- ``GUNICORN_WORKERS`` / ``WRITER_BATCH_SIZE``: as in production. The worker class is fixed by
  services/api/gunicorn.conf.py (``chat_api.worker.ApiWorker``: uvicorn, one event loop per process).
"""

from __future__ import annotations

import argparse
import json

from benchmarks import report
from benchmarks.knobs import RESULTS
from benchmarks.runner import Bench
from benchmarks.scenarios import SCENARIOS
from chat_devtools.processes import ROOT


def main() -> None:
    """Parse arguments, run, write the JSON, the table and the plots, print the summary line last."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SCENARIOS)}")
    parser.add_argument("--no-report", action="store_true", help="do not touch latest.json or docs/performance.md")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: keep the other scenarios of the committed latest.json (each scenario says its run)",
    )
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    if args.merge and not only:
        parser.error("--merge adds the scenarios of --only to the committed results")
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    results = Bench(only).run()
    if args.merge:
        results = report.merged(json.loads(RESULTS.read_text()), results)
    results["summary"] = report.summarize(results)
    if args.no_report:
        out = RESULTS.with_name("partial.json.tmp")
        report.write_json(results, out)
    else:
        report.write_all(results, RESULTS)
        out = RESULTS
    print(report.summary_line(results["summary"], out.relative_to(ROOT)), flush=True)
