"""`python -m benchmarks.ab NAME:KEY=VALUE,... NAME:...`: A/B the create path between environment variants.

Each round restarts the API once per variant and measures POST …/messages beside the bare-Falcon ceiling
(same gunicorn configuration and worker class), so every variant sees the same (noisy, shared) machine within
a few seconds of the others; medians over the rounds are what to compare. Used for the tuning log in
docs/performance.md, e.g. ``python -m benchmarks.ab 2w:GUNICORN_WORKERS=2 3w:GUNICORN_WORKERS=3``.
"""

from __future__ import annotations

import argparse
import json
import statistics

from benchmarks.knobs import LOG_DIR, MESSAGE_BODY, RESULTS
from benchmarks.system import PeakMemory, Stack
from chat_devtools.http import Api
from chat_devtools.load.wrk import wrk
from chat_devtools.namespace import Namespace


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``name:KEY=VALUE,KEY=VALUE`` -> (name, environment)."""
    name, _, assignments = spec.partition(":")
    env = dict(item.split("=", 1) for item in assignments.split(",") if item)
    return name, env


def main() -> None:
    """Interleaved rounds of every variant; prints each point and the medians, writes results/ab-latest.json."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="NAME:KEY=VALUE,...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variants)
    namespace = Namespace.create("ab")
    log_dir = LOG_DIR / namespace.name
    memory = PeakMemory()
    bare = Stack(namespace, log_dir / "bare", memory, app="benchmarks.apps:bare_app()").start_api()
    setup = Stack(namespace, log_dir / "setup", memory).start()
    results: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        client = Api(setup.base_url)
        token = client.new_application("ab")
        chats = [client.new_chat(token, f"ab {i}") for i in range(16)]
        client.wait_chat(token, chats[-1])
        client.session.close()
        setup.system.api.stop()
        paths = [f"/applications/{token}/chats/{n}/messages" for n in chats]
        post = {"method": "POST", "body": MESSAGE_BODY}
        for round_ in range(args.rounds):
            for name, env in variants.items():
                stack = Stack(namespace, log_dir / name, memory, env=env)
                stack.start_api()
                wrk(stack.base_url, paths, connections=16, seconds=2, **post)
                ceiling = wrk(bare.base_url, paths, connections=args.connections, seconds=args.seconds, **post)
                meter = stack.cpu_meter().start()
                real = wrk(stack.base_url, paths, connections=args.connections, seconds=args.seconds, **post)
                cores = meter.stop(real.client_cpu * real.seconds)
                stack.system.api.stop()
                point = {
                    "rps": real.rps,
                    "p99_ms": real.p99_ms,
                    "ceiling_rps": ceiling.rps,
                    "ratio": real.rps / ceiling.rps,
                    "api_cpu_us_per_request": cores["api"] / real.rps * 1e6,
                    "other_cores": cores["other"],
                }
                results[name].append(point)
                print(
                    f"round {round_} {name:<16} {real.rps:7.0f} req/s p99 {real.p99_ms:6.1f} ms | ceiling"
                    f" {ceiling.rps:7.0f} | ratio {point['ratio']:.3f} | API {point['api_cpu_us_per_request']:4.0f}"
                    f" µs/req | other load {cores['other']:.2f} cores",
                    flush=True,
                )
    finally:
        bare.stop()
        setup.stop()
        namespace.destroy()
    medians = {
        name: {key: round(statistics.median(p[key] for p in points), 3) for key in points[0]}
        for name, points in results.items()
    }
    for name, m in medians.items():
        print(
            f"median {name:<16} {m['rps']:7.0f} req/s p99 {m['p99_ms']:6.1f} ms | ratio {m['ratio']:.3f}"
            f" | API {m['api_cpu_us_per_request']:4.0f} µs/req"
        )
    out = RESULTS.with_name("ab-latest.json")
    out.write_text(json.dumps({"variants": variants, "rounds": results, "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
