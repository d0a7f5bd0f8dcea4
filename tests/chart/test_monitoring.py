"""Alert rules and the Grafana dashboard: promtool checks and unit tests, metric names against the code, and a real
Prometheus scraping the locally running API and writers with the chart's rules loaded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from chat_devtools.ports import free_port
from chat_devtools.processes import Process, System
from tests.chart.conftest import rendered
from tests.chart.rendering import CHART_DIR, NAMESPACE, ROOT, Manifest, of_kind

SOURCES = [ROOT / "common", ROOT / "services", ROOT / "operator"]
# Series that do not come from chat-system's code: Prometheus's own per-target `up`, and kube-state-metrics
# (shipped by kube-prometheus-stack) for the writers' replica counts.
STANDARD_METRICS = {
    "up",
    "kube_deployment_status_replicas_available",
    "kube_horizontalpodautoscaler_status_desired_replicas",
}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
ALERTS_THE_ISSUE_ASKS_FOR = {
    "ChatQueueBacklogGrowing",  # queue backlog growing
    "ChatWriterBatchesFailing",  # writer errors
    "ChatDeadLetterQueueNotEmpty",  # dead-letter queue not empty
    "ChatCountSyncStale",  # count sync stale
    "ChatApiHighErrorRatio",  # API 5xx ratio
    "ChatApiHighLatencyP99",  # p99 latency
    "ChatRetryTierOverdue",  # a retried message held past its due time
    "ChatRetryTierUndrained",  # a retry tier with messages and no writer draining it
    # Issue #25: webhooks.
    "ChatWebhookEndpointFailing",  # endpoint failing
    "ChatWebhookBacklogOld",  # backlog age
}


def prometheus_rule(variant: str = "default-keda") -> Manifest:
    (rule,) = of_kind(rendered(variant), "PrometheusRule")
    return rule


def rule_groups(variant: str = "default-keda", *, annotations: bool = True) -> dict:
    groups = json.loads(json.dumps(prometheus_rule(variant).obj["spec"]["groups"]))
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    return {"groups": groups}


def alert_exprs(variant: str = "default-keda") -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rule_groups(variant)["groups"] for r in g["rules"]}


def dashboard() -> dict:
    return json.loads((CHART_DIR / "dashboards" / "chat-system.json").read_text())


def dashboard_panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, keywords, labels and grouping lists left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def exported_metrics() -> set[str]:
    """Every metric name string literal in the services' Python sources."""
    names = set()
    for root in SOURCES:
        for path in root.rglob("*.py"):
            names.update(re.findall(r"""["'](chat_[a-z0-9_]+)["']""", path.read_text()))
    return names


def is_exported(name: str, exported: set[str]) -> bool:
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return name in exported or base in exported


# -- Static checks -------------------------------------------------------------------------------------------------


def test_metric_name_extraction_understands_promql():
    expr = 'sum by (queue, le) (rate(chat_x_bucket{job=~"a|b", kind="dead"}[5m])) / on (queue) up > bool 0.5'
    assert metric_names(expr) == {"chat_x_bucket", "up"}
    assert metric_names('time() - max(chat_y{namespace="$namespace"})') == {"chat_y"}


def test_every_metric_in_the_alerts_and_dashboard_is_exported_by_the_services():
    exported = exported_metrics()
    assert {"chat_api_requests_total", "chat_queue_messages", "chat_counts_sync_rows_updated"} <= exported
    used = {name for expr in [*alert_exprs().values(), *dashboard_exprs()] for name in metric_names(expr)}
    missing = {n for n in used if n.startswith("chat_") and not is_exported(n, exported)}
    assert not missing, f"not exported by any service: {sorted(missing)}"
    foreign = {n for n in used if not n.startswith("chat_")} - STANDARD_METRICS
    assert not foreign, f"neither chat-system nor a standard metric: {sorted(foreign)}"


def test_the_alerts_the_issue_asks_for_exist():
    assert set(alert_exprs()) >= ALERTS_THE_ISSUE_ASKS_FOR
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_are_scoped_to_the_release():
    for name, expr in alert_exprs().items():
        selectors = re.findall(r"[a-z_]+\{([^}]*)\}", expr)
        assert selectors, name
        for selector in selectors:
            assert f'namespace="{NAMESPACE}"' in selector and "job" in selector, f"{name}: {selector}"


def test_dashboard_shows_what_the_issue_asks_for():
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert {
        "chat_api_requests_total",  # request rate and errors per route
        "chat_api_request_duration_seconds_bucket",  # latency per route
        "chat_queue_messages",  # queue depths
        "chat_writer_applied_total",  # writer throughput
        "chat_writer_batch_size_bucket",  # batch sizes
        "chat_counts_sync_last_success_timestamp_seconds",  # count-sync age
        "kube_deployment_status_replicas_available",  # replicas of each writer
    } <= used
    by_route = [t for p in dashboard_panels() for t in p["targets"] if "chat_api_request" in t["expr"]]
    assert all("route" in t["expr"] or "status" in t["expr"] for t in by_route)


def test_dashboard_shows_the_live_streams():
    """The live streams' metrics: open streams, events delivered per second, delivery lag percentiles, cut-offs."""
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard_panels()}
    metric = {title: {n for e in exprs for n in metric_names(e)} for title, exprs in panels.items()}
    assert "chat_api_streams_open" in metric["Open streams"]
    assert all(e.startswith("sum") for e in panels["Open streams"])  # a livesum gauge: one series per pod
    assert metric["Events delivered per second"] == {"chat_api_stream_events_total"}
    assert all("rate(" in e for e in panels["Events delivered per second"])
    lag = panels["Delivery lag percentiles"]
    assert {n for e in lag for n in metric_names(e)} == {"chat_api_stream_lag_seconds_bucket"}
    assert sorted(re.match(r"histogram_quantile\((0\.\d+),", e).group(1) for e in lag) == ["0.5", "0.9", "0.99"]
    cut = panels["Streams cut off or refused"]
    assert {"chat_api_stream_closed_total", "chat_api_stream_refused_total"} == metric["Streams cut off or refused"]
    assert any('reason!="client"' in e for e in cut)  # the server's cut-offs, not clients leaving
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert "Live streams (SSE)" in rows


# The webhook dispatcher's metrics (services/webhook-dispatcher), by the names its metrics module exports.
WEBHOOK_METRICS = {
    "chat_webhook_deliveries_total",  # counter {outcome=delivered|retried|given_up|refused|gone}
    "chat_webhook_delivery_latency_seconds_bucket",  # histogram: commit -> receiver 2xx
    "chat_webhook_backlog_events",  # gauge {endpoint}
    "chat_webhook_backlog_age_seconds",  # gauge {endpoint}: age of the oldest undelivered event
    "chat_webhook_endpoints",  # gauge {state=healthy|failing|disabled}: the deployment's count, on every replica
    "chat_webhook_leased_endpoints",  # gauge per process
}


def row_panels(title: str) -> dict[str, list[str]]:
    """Title -> expressions of the panels under one row of the dashboard (up to the next row)."""
    panels = dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title)
    found = {}
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        found[panel["title"]] = [t["expr"] for t in panel["targets"]]
    return found


def test_dashboard_shows_the_webhooks():
    """Issue #25: deliveries by outcome, commit -> 2xx latency, backlog and its age per endpoint, endpoints by state
    (max: every replica reports the whole deployment's count), leased endpoints per pod."""
    panels = row_panels("Webhooks")
    used = {n for exprs in panels.values() for e in exprs for n in metric_names(e)}
    assert used >= WEBHOOK_METRICS
    by_metric = {n: e for exprs in panels.values() for e in exprs for n in metric_names(e)}
    assert by_metric["chat_webhook_deliveries_total"].startswith("sum by (outcome) (rate(")
    latency = [e for exprs in panels.values() for e in exprs if "chat_webhook_delivery_latency" in e]
    assert sorted(re.match(r"histogram_quantile\((0\.\d+),", e).group(1) for e in latency) == ["0.5", "0.99"]
    assert by_metric["chat_webhook_backlog_events"].startswith("max by (endpoint)")
    assert by_metric["chat_webhook_backlog_age_seconds"].startswith("max by (endpoint)")
    assert by_metric["chat_webhook_endpoints"].startswith("max by (state)")
    assert by_metric["chat_webhook_leased_endpoints"].startswith("sum by (pod)")


def test_webhook_alerts_read_the_deployment_wide_gauges_with_max():
    """chat_webhook_endpoints is the same on every dispatcher replica: a sum would count each endpoint once per
    replica and fire on replica count alone."""
    exprs = alert_exprs()
    for name in ("ChatWebhookEndpointFailing", "ChatWebhookEndpointDisabled", "ChatWebhookBacklogOld"):
        assert exprs[name].startswith("max by (namespace)"), name
    assert 'state="failing"' in exprs["ChatWebhookEndpointFailing"]
    assert 'state="disabled"' in exprs["ChatWebhookEndpointDisabled"]
    rules = {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"]}
    assert rules["ChatWebhookEndpointFailing"]["for"] == "30m"
    assert exprs["ChatWebhookBacklogOld"].endswith("> 300") and rules["ChatWebhookBacklogOld"]["for"] == "10m"
    assert (
        'absent(up{namespace="chat-system", job="chat-chat-system-webhook-dispatcher"})'
        in exprs["ChatWebhookDispatcherDown"]
    )
    groups = {g["name"]: {r["alert"] for r in g["rules"]} for g in rule_groups()["groups"]}
    assert {n for n in groups["chat-system.webhooks"]} == {
        "ChatWebhookEndpointFailing",
        "ChatWebhookEndpointDisabled",
        "ChatWebhookBacklogOld",
        "ChatWebhookDispatcherDown",
    }


def test_dashboard_is_a_well_formed_grafana_dashboard():
    board = dashboard()
    assert board["uid"] == "chat-system" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]


# -- promtool ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.skip("promtool is missing (Debian package `prometheus`; .ci/run installs it)")
    return found


@pytest.mark.parametrize("variant", ["default-keda", "kind", "external-secret"])
def test_promtool_accepts_the_rules(promtool, tmp_path, variant):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(variant)))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_should_and_stay_quiet_otherwise(promtool, tmp_path):
    """promtool's rule unit tests, on the rendered rules with the default thresholds."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(annotations=False)))
    ns = f'namespace="{NAMESPACE}"'
    writer = f'{ns}, job="chat-chat-system-message-writer"'
    api = f'{ns}, job="chat-chat-system-api"'
    sync = f'{ns}, job="chat-counter-cron"'
    hook = f'{ns}, job="chat-chat-system-webhook-dispatcher"'
    broken = {
        "interval": "1m",
        "input_series": [
            {
                "series": f'chat_queue_messages{{{writer}, queue="chat_system.messages", kind="work"}}',
                "values": "0+1000x40",
            },
            {
                "series": f'chat_queue_messages{{{writer}, queue="chat_system.messages.dead", kind="dead"}}',
                "values": "0 0 3x40",
            },
            {
                "series": f'chat_writer_batch_failures_total{{{writer}, queue="chat_system.messages"}}',
                "values": "0+2x40",
            },
            {
                "series": f'chat_writer_retry_overdue_seconds{{{writer}, queue="chat_system.messages"}}',
                "values": "0 0 90x40",
            },
            {
                "series": f'chat_queue_messages{{{writer}, queue="chat_system.chats.delay.5s", kind="retry"}}',
                "values": "0 0 4x40",
            },
            {
                "series": f'chat_queue_consumers{{{writer}, queue="chat_system.chats.delay.5s", kind="retry"}}',
                "values": "1 1 0x40",
            },
            {
                "series": f'chat_api_requests_total{{{api}, route="/x", method="POST", status="201"}}',
                "values": "0+60x40",
            },
            {
                "series": f'chat_api_requests_total{{{api}, route="/x", method="POST", status="503"}}',
                "values": "0+30x40",
            },
            {"series": f"chat_counts_sync_last_success_timestamp_seconds{{{sync}}}", "values": "0x40"},
            {"series": f'up{{{ns}, job="chat-chat-system-chat-writer", instance="a"}}', "values": "0x40"},
            {"series": f'chat_api_db_replica_lag_seconds{{{api}, instance="a", replica="r1:3306"}}', "values": "0x40"},
            {
                "series": f'chat_api_db_replica_lag_seconds{{{api}, instance="b", replica="r1:3306"}}',
                "values": "0 0 -1x40",
            },
            {"series": f'chat_api_db_replica_lag_seconds{{{api}, instance="b", replica="r2:3306"}}', "values": "0x40"},
            # Two dispatcher replicas report the deployment's endpoint counts (the same numbers: max, not sum).
            *(
                {"series": f'chat_webhook_endpoints{{{hook}, instance="{i}", state="failing"}}', "values": "0 0 2x40"}
                for i in ("a", "b")
            ),
            *(
                {"series": f'chat_webhook_endpoints{{{hook}, instance="{i}", state="disabled"}}', "values": "0x10 1x30"}
                for i in ("a", "b")
            ),
            {"series": f'chat_webhook_backlog_age_seconds{{{hook}, instance="a", endpoint="7"}}', "values": "0+60x40"},
            {"series": f'chat_webhook_backlog_age_seconds{{{hook}, instance="b", endpoint="8"}}', "values": "1x40"},
            {"series": f'up{{{ns}, job="chat-chat-system-webhook-dispatcher", instance="a"}}', "values": "0x40"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "ChatDeadLetterQueueNotEmpty",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "namespace": NAMESPACE,
                            "queue": "chat_system.messages.dead",
                        }
                    }
                ],
            },
            {
                "eval_time": "30m",
                "alertname": "ChatQueueBacklogGrowing",
                "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "namespace": NAMESPACE, "queue": "chat_system.messages"}}
                ],
            },
            {"eval_time": "3m", "alertname": "ChatRetryTierOverdue", "exp_alerts": []},  # not for 2 minutes yet
            {
                "eval_time": "10m",
                "alertname": "ChatRetryTierOverdue",
                "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "namespace": NAMESPACE, "queue": "chat_system.messages"}}
                ],
            },
            {
                "eval_time": "10m",
                "alertname": "ChatRetryTierUndrained",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "namespace": NAMESPACE,
                            "queue": "chat_system.chats.delay.5s",
                        }
                    }
                ],
            },
            {
                "eval_time": "15m",
                "alertname": "ChatWriterBatchesFailing",
                "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "namespace": NAMESPACE, "queue": "chat_system.messages"}}
                ],
            },
            {
                "eval_time": "15m",
                "alertname": "ChatApiHighErrorRatio",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": NAMESPACE}}],
            },
            {"eval_time": "20m", "alertname": "ChatCountSyncStale", "exp_alerts": []},
            {
                "eval_time": "40m",
                "alertname": "ChatCountSyncStale",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": NAMESPACE}}],
            },
            {"eval_time": "40m", "alertname": "ChatCountSyncNeverReported", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "ChatDatabaseReplicaSetAside", "exp_alerts": []},
            {
                # one API pod cannot use the replica (the other still can): the replica is set aside there
                "eval_time": "15m",
                "alertname": "ChatDatabaseReplicaSetAside",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": NAMESPACE, "replica": "r1:3306"}}],
            },
            {
                "eval_time": "10m",
                "alertname": "ChatWriterDown",
                # chat-writer's target is down; message-writer has no target left at all (no `up` series).
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "namespace": NAMESPACE,
                            "job": f"chat-chat-system-{name}",
                        }
                    }
                    for name in ("chat-writer", "message-writer")
                ],
            },
            {"eval_time": "20m", "alertname": "ChatWebhookEndpointFailing", "exp_alerts": []},  # not for 30m yet
            {
                "eval_time": "35m",
                "alertname": "ChatWebhookEndpointFailing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": NAMESPACE}}],
            },
            {"eval_time": "8m", "alertname": "ChatWebhookEndpointDisabled", "exp_alerts": []},
            {
                "eval_time": "15m",
                "alertname": "ChatWebhookEndpointDisabled",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": NAMESPACE}}],
            },
            {"eval_time": "10m", "alertname": "ChatWebhookBacklogOld", "exp_alerts": []},  # old, not for 10m yet
            {
                "eval_time": "20m",
                "alertname": "ChatWebhookBacklogOld",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": NAMESPACE}}],
            },
            {
                "eval_time": "10m",
                "alertname": "ChatWebhookDispatcherDown",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "namespace": NAMESPACE,
                            "job": "chat-chat-system-webhook-dispatcher",
                        }
                    }
                ],
            },
        ],
    }
    healthy = {
        "interval": "1m",
        "input_series": [
            {"series": f'chat_queue_messages{{{writer}, queue="chat_system.messages", kind="work"}}', "values": "5x40"},
            {
                "series": f'chat_queue_messages{{{writer}, queue="chat_system.messages.dead", kind="dead"}}',
                "values": "0x40",
            },
            {"series": f'chat_writer_batch_failures_total{{{writer}, queue="chat_system.messages"}}', "values": "0x40"},
            # Retries flowing: held up to a few seconds late, a tier with messages that its writers drain.
            {
                "series": f'chat_writer_retry_overdue_seconds{{{writer}, queue="chat_system.messages"}}',
                "values": "0 3 0 12 0x40",
            },
            {
                "series": f'chat_queue_messages{{{writer}, queue="chat_system.messages.delay.1s", kind="retry"}}',
                "values": "7x40",
            },
            {
                "series": f'chat_queue_consumers{{{writer}, queue="chat_system.messages.delay.1s", kind="retry"}}',
                "values": "2x40",
            },
            {
                "series": f'chat_api_requests_total{{{api}, route="/x", method="POST", status="201"}}',
                "values": "0+60x40",
            },
            {"series": f"chat_counts_sync_last_success_timestamp_seconds{{{sync}}}", "values": "0+60x40"},
            {"series": f'up{{{ns}, job="chat-chat-system-chat-writer", instance="a"}}', "values": "1x40"},
            {"series": f'up{{{ns}, job="chat-chat-system-message-writer", instance="b"}}', "values": "1x40"},
            {
                "series": f'chat_api_db_replica_lag_seconds{{{api}, instance="a", replica="r1:3306"}}',
                "values": "0 3 1 0x40",
            },
            # Webhooks flowing: an endpoint failed for two minutes and recovered, two long disabled (no change),
            # the oldest undelivered event a second old.
            {"series": f'chat_webhook_endpoints{{{hook}, instance="a", state="healthy"}}', "values": "5x40"},
            {"series": f'chat_webhook_endpoints{{{hook}, instance="a", state="failing"}}', "values": "0 1 1 0x40"},
            {"series": f'chat_webhook_endpoints{{{hook}, instance="a", state="disabled"}}', "values": "2x40"},
            {
                "series": f'chat_webhook_backlog_age_seconds{{{hook}, instance="a", endpoint="7"}}',
                "values": "0 2 1 0x40",
            },
            {"series": f'up{{{ns}, job="chat-chat-system-webhook-dispatcher", instance="a"}}', "values": "1x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": name, "exp_alerts": []} for name in sorted(alert_exprs())
        ],
    }
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [broken, healthy]})
    )
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- A real Prometheus ---------------------------------------------------------------------------------------------


class Prometheus:
    """A Prometheus server of the test's own, on a free port, with its data in a temporary directory."""

    def __init__(self, binary: str, config: dict, rules: dict, workdir: Path, log_dir: Path) -> None:
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": [str(workdir / "rules.yaml")]}))
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
        ]
        self.process = Process("prometheus", argv, {"PATH": "/usr/bin:/bin"}, log_dir)

    def start(self) -> Prometheus:
        self.process.start()
        self.wait_for(lambda: requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200, "Prometheus ready")
        return self

    def query(self, promql: str) -> list[dict]:
        resp = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        resp.raise_for_status()
        return resp.json()["data"]["result"]

    def wait_for(self, probe, what: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if probe():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; see {self.process.log_path}")

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        pytest.skip("prometheus is missing (Debian package `prometheus`; .ci/run installs it)")
    return found


def test_prometheus_scrapes_the_services_and_evaluates_the_chart_rules(prometheus_binary, fresh_namespace, tmp_path):
    """The API, both writers and (when installed) a Pushgateway with a count sync's push, scraped by a real
    Prometheus under the labels the ServiceMonitors give them, with the chart's alert rules loaded."""
    log_dir = tmp_path / "logs"
    system = System(fresh_namespace, log_dir)
    writer_ports = {"chat-writer": free_port(), "message-writer": free_port()}
    for process, port in (
        (system.chat_writer, writer_ports["chat-writer"]),
        (system.message_writer, writer_ports["message-writer"]),
    ):
        process.env = {**system.env, "METRICS_PORT": str(port)}
    pushgateway_binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    pushgateway = None
    jobs = {
        "chat-chat-system-api": system.base_url.removeprefix("http://"),
        "chat-chat-system-chat-writer": f"127.0.0.1:{writer_ports['chat-writer']}",
        "chat-chat-system-message-writer": f"127.0.0.1:{writer_ports['message-writer']}",
    }
    scrape_configs = [
        {"job_name": job, "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE}}]}
        for job, target in jobs.items()
    ]
    if pushgateway_binary:
        address = f"127.0.0.1:{free_port()}"
        pushgateway = Process("pushgateway", [pushgateway_binary, f"--web.listen-address={address}"], {}, log_dir)
        system.env["PUSHGATEWAY_URL"] = f"http://{address}"
        scrape_configs.append(
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [address], "labels": {"namespace": NAMESPACE}}],
            }
        )
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
    prometheus = Prometheus(prometheus_binary, config, rule_groups(), tmp_path, log_dir)
    try:
        if pushgateway:
            pushgateway.start()
        system.start()
        prometheus.start()
        api = system.base_url
        token = requests.post(f"{api}/applications", json={"name": "scraped"}, timeout=10).json()["token"]
        chat = requests.post(f"{api}/applications/{token}/chats", json={"name": "c"}, timeout=10).json()["chat_number"]
        message = requests.post(f"{api}/applications/{token}/chats/{chat}/messages", json={"body": "hi"}, timeout=10)
        assert message.status_code == 201, message.text
        requests.get(f"{api}/applications/{token}/chats/{chat}/messages/999", timeout=10)  # a 404
        if pushgateway:
            prometheus.wait_for(
                lambda: requests.get(f"{api}/applications/{token}/chats/{chat}/messages/1", timeout=5).ok,
                "the message to land",
            )
            system.sync_counts()

        for job in jobs:
            prometheus.wait_for(lambda job=job: prometheus.query(f'up{{job="{job}"}} == 1'), f"{job} scraped")
        api_sel = f'namespace="{NAMESPACE}", job="chat-chat-system-api"'
        writers_sel = f'namespace="{NAMESPACE}", job=~"chat-chat-system-chat-writer|chat-chat-system-message-writer"'
        expectations = {
            f'chat_api_requests_total{{{api_sel}, route="/applications", method="POST", status="201"}}': "API requests",
            f'chat_api_requests_total{{{api_sel}, status="404"}}': "the 404",
            f"chat_api_request_duration_seconds_bucket{{{api_sel}}}": "API latency histogram",
            f"chat_api_published_total{{{api_sel}}}": "confirmed publishes",
            f'chat_writer_applied_total{{{writers_sel}, queue=~".*[.]messages"}} > 0': "messages written",
            f"chat_writer_batch_size_count{{{writers_sel}}} > 0": "batch sizes",
            f'chat_queue_messages{{{writers_sel}, kind="dead"}}': "dead-letter queue depth",
            f'chat_queue_messages{{{writers_sel}, kind="work"}}': "work queue depth",
        }
        if pushgateway:
            expectations[
                f'chat_counts_sync_last_success_timestamp_seconds{{namespace="{NAMESPACE}", job="chat-counter-cron"}}'
            ] = "the count sync's push"
        for promql, what in expectations.items():
            prometheus.wait_for(lambda promql=promql: prometheus.query(promql), what)

        # The rendered rules loaded, evaluate without error, and their selectors match the real series.
        def rules_evaluated() -> bool:
            groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == len(alert_exprs()) and all(r.get("lastEvaluation", "").startswith("2") for r in rules)

        prometheus.wait_for(rules_evaluated, "every rule evaluated")
        groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert [r["name"] for g in groups for r in g["rules"] if r["health"] != "ok"] == []

        def active_alerts() -> set[str]:
            alerts = requests.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            return {a["labels"]["alertname"] for a in alerts}

        # A rule evaluated before the first scrape of a writer sees no `up` series yet: its `absent()` branch
        # makes ChatWriterDown pending for that moment. Once every target is scraped it must clear, and stay so.
        prometheus.wait_for(lambda: "ChatWriterDown" not in active_alerts(), "ChatWriterDown to clear")
        time.sleep(2)  # two more evaluations
        firing = active_alerts()
        assert "ChatWriterDown" not in firing and "ChatDeadLetterQueueNotEmpty" not in firing
        # The alerts' selectors match the real series: the p99 the latency alert compares is computed.
        latency = alert_exprs()["ChatApiHighLatencyP99"].rsplit(">", 1)[0]
        prometheus.wait_for(lambda: prometheus.query(latency), "the latency alert's p99 per route")
    finally:
        prometheus.stop()
        system.stop()
        if pushgateway:
            pushgateway.stop()
