"""Generate docs/reliability.md from the results the reliability, chaos and soak suites saved.

    python -m chat_devtools.reliability_report [--results DIR] [--out docs/reliability.md] [--keep]

``make reliability`` runs every suite and then this. Nothing in the report is typed by hand but the
explanations of what each section checks; every figure comes from the last run's JSON files. ``--keep`` leaves the
sections whose suite has no results in DIR as the current report has them (to add one suite's figures, e.g. the
cluster scenarios of ``make cluster-failover``, without running every suite again).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from chat_devtools.results import RESULTS_DIR, load_all

ROOT = Path(__file__).resolve().parents[2]


def _when(stamp: float | None) -> str:
    if not stamp:
        return "never"
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    text = str(value).replace("|", "\\|").replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= 160 else text[:157] + "…"  # hostile inputs can be megabytes


def _table(headers: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _outcome(row: dict) -> str:
    return "as documented" if row.get("outcome") == "pass" else "**FAILED**"


def _chaos(doc: dict | None) -> list[str] | None:
    if not doc:
        return None
    rows = doc["rows"]
    out = [
        f"Last run: {_when(doc['finished_at'])}, {doc['host']['cpus']} CPUs. Each fault hit a fresh system on private "
        "MariaDB, Redis and RabbitMQ instances while 4 clients created chats and messages as fast as they were "
        "answered. *Accepted* = answered 201; *persisted* = found in MySQL exactly once with the answered number "
        "and text; *stored after 503* = the client was told to retry, the write landed anyway (allowed: a 503 "
        "promises nothing, see below); *first 201 after* = seconds from the fault being cleared to the next "
        "accepted create; *drained* = seconds from the end of the load until the last accepted row was in MySQL.",
        "",
    ]
    out += _table(
        ["fault", "what happened", "accepted", "persisted", "lost", "duplicated", "503", "stored after 503",
         "first 201 after (s)", "drained (s)", "counts exact", "search agrees", "recovered by itself", "result"],
        [[r["fault"], r["what_happened"], r["accepted"], r["persisted"], r["lost"], r["duplicated"],
          r["answered_503"], r["stored_after_503"], r["first_201_after_recovery_s"], r["backlog_drained_s"],
          r["counts_exact"], r["search_agrees"], r["services_recovered"],
          "pass" if r.get("outcome") == "pass" else "**FAILED**"] for r in rows],
    )  # fmt: skip
    accepted = sum(r["accepted"] for r in rows)
    lost = sum(r["lost"] for r in rows)
    duplicated = sum(r["duplicated"] for r in rows)
    out += [
        "",
        f"**Across every fault: {accepted} creates accepted, {lost} lost, {duplicated} duplicated, "
        f"{sum(r['invented'] for r in rows)} rows nobody sent.** Secrets (admin key, database, Redis and RabbitMQ "
        f"passwords) found in process logs: {sum(len(r['secrets_in_logs']) for r in rows)}.",
        "",
    ]
    names = {r["fault"] for r in rows}
    if not any("Elasticsearch" in n for n in names):
        out += [
            "Not run here: *Elasticsearch unreachable* — this machine has no Elasticsearch. The scenario exists "
            "(`tests/chaos/test_chaos.py::test_elasticsearch_unavailable`, a TCP proxy cuts the cluster off) and "
            "runs with `CHAOS_ELASTICSEARCH_URL=http://host:9200`. The default search backend reads MySQL, so its "
            "outage is the MariaDB scenario.",
            "",
        ]
    return out


def _guarantees(doc: dict | None, fresh: dict | None) -> list[str] | None:
    rows = (doc or {}).get("rows", []) + (fresh or {}).get("rows", [])
    if not rows:
        return None
    out = [
        "Readiness, idempotent retries and error answers, observed from outside over HTTP "
        "(`tests/chaos/test_client_guarantees.py`, `tests/integration/test_fresh_start.py`).",
        "",
    ]
    out += _table(["check", "observed", "result"], [[r["check"], r.get("observed", ""), _outcome(r)] for r in rows])
    return [*out, ""]


def _hostile(doc: dict | None) -> list[str] | None:
    if not doc:
        return None
    rows = doc["rows"]
    ok = sum(r.get("outcome") == "pass" for r in rows)
    untouched = doc["meta"].get("victim_untouched")
    out = [
        f"Last run: {_when(doc['finished_at'])}. {len(rows)} inputs, {ok} answered as documented, "
        f"{len(rows) - ok} not. Every request was "
        "sent as exact bytes. Rejected requests aimed at one seeded application; afterwards its rows and Redis "
        f"counters were {'unchanged' if untouched else '**changed**' if untouched is False else 'not checked'}. "
        '*app* answers are JSON `{"error": …}` with the security headers; *gunicorn* answers come from the HTTP '
        "server before the application (an HTML page, still no internals). *verbatim* rows are valid text that "
        "looks dangerous: accepted and returned byte for byte, never interpreted.",
        "",
    ]
    out += _table(
        ["category", "input", "expected", "got", "answered by", "result"],
        [[r["category"], r["input"], r["expected"], r["got"], r.get("answered_by"), _outcome(r)] for r in rows],
    )
    return [*out, ""]


def _security(doc: dict | None) -> list[str] | None:
    if not doc:
        return None
    out = [f"Last run: {_when(doc['finished_at'])}.", ""]
    out += _table(["check", "result"], [[r["check"], _outcome(r)] for r in doc["rows"]])
    return [*out, ""]


def _fuzz(doc: dict | None) -> list[str] | None:
    if not doc or not doc["meta"]:
        return None
    m = doc["meta"]
    phases = ", ".join(f"{k} {v}" for k, v in m.get("phases", {}).items())
    out = [
        f"Last run: {_when(doc['finished_at'])}, seed `{m.get('seed')}` (replay with `FUZZ_SEED`). "
        f"{m.get('test_cases')} generated requests over {m.get('operations')} operations "
        f"({m.get('max_examples')} examples per operation and phase) in {m.get('seconds')} s; phases: {phases}. "
        f"Failures: **{m.get('failures')}**, errors: {m.get('errors')}. Writers still consuming afterwards: "
        f"{_cell(m.get('writers_alive_after'))}.",
        "",
        "Checks: no 5xx, every status, content type, header and body as documented (response objects admit no "
        "undocumented field), schema-violating requests rejected and valid ones accepted, undocumented methods "
        "answered 405, admin operations refusing missing and wrong keys, deleted applications gone. Not applied: "
        "`ensure_resource_availability` (a create is readable within about a second, not at once, by design).",
        "",
    ]
    if doc["rows"]:
        failures = [[r["code"], r["title"], r["count"], ", ".join(r["operations"])] for r in doc["rows"]]
        out += _table(["code", "failure", "count", "operations"], failures)
        out.append("")
    return out


def _cluster(doc: dict | None) -> list[str] | None:
    if not doc or not doc["rows"]:
        return None
    out = [
        f"Last run: {_when(doc['finished_at'])}, {doc['host']['cpus']} CPUs. A 3-node RabbitMQ cluster of private "
        "nodes on loopback (quorum queues), the API given every node's URL, 4 clients creating messages through the "
        "API without pause; a node SIGKILLed under the load, kept down, restarted with its data "
        "(`tests/cluster/test_rabbit_failover.py`). *Longest gap* = the longest stretch without a 201 while a killed "
        "node was down; *stored within* = seconds from the end of the load until every accepted create was in MySQL; "
        "*retry overdue* = the most any writer held a retried message past its due time (its own reports, sampled "
        "every 0.25 s).",
        "",
    ]
    out += _table(
        ["scenario", "what happened", "accepted", "persisted", "lost", "duplicated", "503", "longest gap (s)",
         "stored within (s)", "retry overdue max (s)", "result"],
        [[r["scenario"], r.get("what_happened"), r.get("accepted"), r.get("persisted"), r.get("lost"),
          r.get("duplicated"), r.get("answered_503"), r.get("longest_gap_s"), r.get("stored_within_s"),
          r.get("retry_overdue_max_s"), "pass" if r.get("outcome") == "pass" else "**FAILED**"] for r in doc["rows"]],
    )  # fmt: skip
    return [*out, ""]


def _soak(doc: dict | None) -> list[str] | None:
    if not doc or not doc["meta"]:
        return None
    m = doc["meta"]
    latency = m.get("latency_ms", {})
    out = [
        f"Last run: {_when(doc['finished_at'])}: {m['seconds']:.0f} s measured after {m['warmup_seconds']:.0f} s of "
        f"warm-up, {m['requests']} creates ({m['rate_per_second']}/s), {m['accepted']} accepted, {m['persisted']} "
        f"persisted, {m['lost']} lost, {m['duplicated']} duplicated; latency p50 {latency.get('p50')} ms, "
        f"p99 {latency.get('p99')} ms. Bounds for our processes: RSS +max(16 MiB, 10 %), file descriptors and TCP "
        "connections +8, threads +4; server-side connections +4. Violations: "
        f"{'none' if not m['violations'] else '; '.join(m['violations'])}.",
        "",
    ]
    out += _table(
        ["process", "RSS MiB start → end", "fds", "threads", "TCP", "server connections", "growth"],
        [[r["process"], f"{r['start']['rss_mib']} → {r['end']['rss_mib']}", f"{r['start']['fds']} → {r['end']['fds']}",
          f"{r['start']['threads']} → {r['end']['threads']}", f"{r['start']['tcp']} → {r['end']['tcp']}",
          f"{r['start']['server_connections']} → {r['end']['server_connections']}"
          if "server_connections" in r["start"] else None, "bounded" if r["bounded"] else "recorded"]
         for r in doc["rows"]],
    )  # fmt: skip
    return [*out, ""]


LIMITS = """## What these runs do not show

- **A 503 is not a guaranteed "nothing happened".** When the broker dies after persisting a message but before
  its confirm reaches the API, the client gets 503 and the write still lands (*stored after 503* above). A client
  that retries then creates a second message with a new number. Closing that needs a client-chosen idempotency key
  on chat and message creates, as applications already have.
- **Slow request bodies** (a `Content-Length` larger than what is sent) hold a gunicorn thread until its
  30 s timeout. In Kubernetes the ingress buffers request bodies; without one, put a buffering proxy in front.
- **Repeated parameters** are accepted, the last value winning (Rails behaviour): `page=1&page=2` reads page 2,
  `name=a&name=b` stores `b`. The fuzzer is told not to count that as accepting invalid data.
- The Elasticsearch outage is not exercised on this machine, nor database failover (a read replica set aside and
  taken back is, in tests/cluster). Broker failover is, on a loopback cluster sharing 2 cores: real nodes on one
  machine, not a network partition.
"""


# Each section: its heading, the suites it is made of, and how it is rendered (None: the suites did not run).
SECTIONS = [
    ("## Faults under load", ("chaos",), _chaos),
    ("## Broker cluster failover", ("cluster",), _cluster),
    ("## What clients see under faults", ("guarantees", "fresh_start"), _guarantees),
    ("## Hostile input", ("hostile",), _hostile),
    ("## Security checks", ("security",), _security),
    ("## Fuzzing (schemathesis, from the OpenAPI document)", ("fuzz",), _fuzz),
    ("## Soak", ("soak",), _soak),
]


def _sections(report: str) -> dict[str, list[str]]:
    """The lines of each ``## `` section of a report, by heading."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in report.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line, [])
        if current is not None:
            current.append(line)
    return found


def render(results: dict[str, dict], previous: str | None = None) -> str:
    """The whole Markdown report; with ``previous``, sections without results keep their text from it."""
    kept = _sections(previous) if previous is not None else {}
    lines = [
        "# Reliability report",
        "",
        "<!-- Generated by `python -m chat_devtools.reliability_report` from the JSON results of the last test run; "
        "do not edit by hand. -->",
        "",
        "Generated from the last run of the reliability suites (`make reliability`: `tests/reliability`, "
        "`tests/chaos`, the broker failover scenarios of `tests/cluster`). How the guarantees work is in "
        "[architecture.md](architecture.md); the API contract is "
        "[services/api/chat_api/openapi.json](../services/api/chat_api/openapi.json), served at `/openapi.json` "
        "and readable at `/docs`.",
        "",
    ]
    for heading, suites, build in SECTIONS:
        if heading in kept and not any(results.get(suite) for suite in suites):
            lines += kept[heading]
        else:
            body = build(*(results.get(suite) for suite in suites))
            lines += [heading, "", *(["_Not run._", ""] if body is None else body)]
    lines.append(LIMITS)
    return "\n".join(lines)


def main() -> None:
    """Write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="directory of the suites' JSON results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("--keep", action="store_true", help="keep the sections of suites without results as they are")
    args = parser.parse_args()
    results = load_all(args.results)
    if not results:
        raise SystemExit(f"no results in {args.results}: run the suites first (make reliability)")
    previous = args.out.read_text() if args.keep and args.out.exists() else None
    args.out.write_text(render(results, previous))
    print(f"wrote {args.out} from {', '.join(sorted(results))}")


if __name__ == "__main__":
    main()
