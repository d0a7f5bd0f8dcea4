"""No token, key, password or SQL parameter in any log line, traceback or 503 body of a full run (issue 23).

Two systems of one namespace, started as the e2e fixtures start them but with gunicorn's access log on and every
process at DEBUG: a healthy one, driven through creates, reads, search, renames, a token rotation (and reads with
the former token), suspension, limits, deletes, unknown tokens and wrong admin keys, then a forced 500 (the
applications table renamed away for a moment: the admin lookups fail with a statement that carries the token as a
parameter); and a faulty one, whose broker and Elasticsearch URLs (with passwords) point at closed ports, for the
503 paths. The database is reached as a user with a password. A count sync runs at DEBUG too.

Every line every process wrote is then searched for every token issued (current and rotated away), the admin key,
the wrong keys sent, every password, and canary strings sent as names and bodies (SQL parameter values).
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.engine import make_url

from chat_common.clients.db import make_engine
from chat_common.redaction import token_ref
from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import BASE_DATABASE_URL, Namespace
from chat_devtools.ports import closed_port as _closed_port
from chat_devtools.processes import ROOT, System
from tests.conftest import LOG_ROOT
from tests.integration.webhook_kit import Receiver


@dataclass
class Run:
    """What the run sent that must never be written down, and where the processes wrote."""

    namespace: Namespace
    healthy: System
    faulty: System
    admin_key: str
    forbidden: set[str] = field(default_factory=set)
    tokens: list[str] = field(default_factory=list)
    bodies_503: list[str] = field(default_factory=list)
    metrics: str = ""
    statuses: list[int] = field(default_factory=list)

    def canary(self, kind: str) -> str:
        value = f"canary-{kind}-{secrets.token_hex(6)}"
        self.forbidden.add(value)
        return value

    def log_files(self) -> list[Path]:
        return sorted({*self.healthy.log_dir.glob("*.log"), *self.faulty.log_dir.glob("*.log")})


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    if os.environ.get("API_BASE_URL"):
        pytest.skip("this run starts its own processes; API_BASE_URL is set")
    admin_key = f"adm-{secrets.token_urlsafe(30)}"
    ns = Namespace.create("leak", admin_api_key=admin_key)
    user, password, url = _database_user(ns)
    loud = {"DATABASE_URL": url, "GUNICORN_ACCESS_LOG": "-", "LOG_LEVEL": "debug"}
    healthy = System(ns, LOG_ROOT / ns.name / "healthy", extra_env=loud).start()
    rabbit_password, es_password = f"mq-{secrets.token_urlsafe(12)}", f"es-{secrets.token_urlsafe(12)}"
    faults = {
        **loud,
        "RABBITMQ_URL": f"amqp://leaky:{rabbit_password}@127.0.0.1:{_closed_port()}/%2F",
        "ELASTICSEARCH_URL": f"http://elastic:{es_password}@127.0.0.1:{_closed_port()}",
    }
    faulty = System(ns, LOG_ROOT / ns.name / "faulty", extra_env=faults).start(wait_ready=False)
    wait_for(lambda: _answers(f"{faulty.base_url}/healthz"), timeout=60, what="the faulty system's API")
    result = Run(ns, healthy, faulty, admin_key, forbidden={admin_key, password, rabbit_password, es_password})
    yield result
    faulty.stop()
    healthy.stop()
    ns.destroy()
    _drop_user(user)


def _database_user(ns: Namespace) -> tuple[str, str, str]:
    """A database user with a password for the namespace's database: ``(user, password, DATABASE_URL)``, so that
    the password is in every process's environment."""
    user, password = f"leak_{uuid.uuid4().hex[:10]}", f"db-{secrets.token_urlsafe(18)}"
    root = make_engine(BASE_DATABASE_URL, pool_size=1)
    database = make_url(ns.settings.database_url).database
    with root.begin() as conn:
        conn.execute(text(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'"))
        conn.execute(text(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'127.0.0.1'"))
    root.dispose()
    url = make_url(ns.settings.database_url).set(username=user, password=password, host="127.0.0.1")
    return user, password, url.render_as_string(hide_password=False)


def _drop_user(user: str) -> None:
    root = make_engine(BASE_DATABASE_URL, pool_size=1)
    with root.begin() as conn:
        conn.execute(text(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
    root.dispose()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _drive_the_healthy_system(run: Run) -> None:
    admin = Api(run.healthy.base_url, admin_key=run.admin_key)
    anonymous = Api(run.healthy.base_url)
    token = admin.new_application(run.canary("app-name"))
    other = admin.new_application(run.canary("other-app"))
    run.tokens += [token, other]
    chat = admin.new_chat(token, run.canary("chat-name"))
    body = run.canary("body")
    number = admin.new_message(token, chat, body)
    admin.wait_message(token, chat, number)
    keyed = {"Idempotency-Key": run.canary("idempotency-key")}
    for _ in range(2):  # the second one replays
        run.statuses.append(
            admin.post(f"/applications/{token}/chats", json={"name": "keyed"}, headers=keyed).status_code
        )
    for path in (
        f"/applications/{token}",
        f"/applications/{token}/chats",
        f"/applications/{token}/chats/{chat}",
        f"/applications/{token}/chats/{chat}/messages",
        f"/applications/{token}/chats/{chat}/messages/{number}",
        f"/applications/{token}/usage",
        f"/applications/{token}/limits",
    ):
        run.statuses.append(admin.get(path).status_code)
    run.statuses.append(
        admin.get(f"/applications/{token}/chats/{chat}/messages/search", params={"query": body}).status_code
    )
    run.statuses.append(admin.patch(f"/applications/{token}", json={"name": run.canary("renamed")}).status_code)
    run.statuses.append(admin.put(f"/applications/{token}/limits", json={"max_chats": 50}).status_code)
    # A rotation with a grace period: the former token still reads, the new one is only in the admin answer.
    rotated = admin.post(f"/applications/{token}/rotate-token", json={"grace_seconds": 600})
    assert rotated.status_code == 200, rotated.text
    new_token = rotated.json()["token"]
    run.tokens.append(new_token)
    for current in (token, new_token):
        run.statuses.append(admin.get(f"/applications/{current}/chats").status_code)
        run.statuses.append(admin.post(f"/applications/{current}/chats", json={"name": "after rotation"}).status_code)
    run.statuses.append(admin.post(f"/applications/{other}/suspend").status_code)
    run.statuses.append(admin.get(f"/applications/{other}/chats").status_code)  # 403
    run.statuses.append(admin.post(f"/applications/{other}/resume").status_code)
    # Strangers: unknown tokens, wrong admin keys.
    for _ in range(3):
        unknown = secrets.token_urlsafe(24)
        run.tokens.append(unknown)
        run.statuses.append(anonymous.get(f"/applications/{unknown}/chats").status_code)
    wrong = f"wrong-{secrets.token_urlsafe(30)}"
    run.forbidden.add(wrong)
    run.statuses.append(Api(run.healthy.base_url, admin_key=wrong).get("/applications").status_code)
    metrics = requests.get(f"{run.healthy.base_url}/metrics", timeout=10)
    assert metrics.status_code == 200 and 'route="/applications/{token}/chats"' in metrics.text
    run.metrics = metrics.text  # labels are route templates: searched with the logs
    run.statuses.append(requests.get(f"{run.healthy.base_url}/status", timeout=10).status_code)

    # A forced 500: the statements that look a tenant up by its token fail (no such table) — not a fault of the
    # database's availability, so an unhandled error with a traceback.
    engine = make_engine(run.namespace.settings.database_url, pool_size=1)
    victim = admin.new_application("victim")
    run.tokens.append(victim)
    try:
        with engine.begin() as conn:
            conn.execute(text("RENAME TABLE applications TO applications_away"))
        for path in (f"/applications/{victim}/usage", f"/applications/{victim}/limits"):
            run.statuses.append(admin.get(path).status_code)
        run.statuses.append(admin.post("/applications", json={"name": run.canary("during-500")}).status_code)
    finally:
        with engine.begin() as conn:
            conn.execute(text("RENAME TABLE applications_away TO applications"))
        engine.dispose()
    assert 500 in run.statuses, run.statuses

    # A count sync at DEBUG, its output beside the others.
    with (run.healthy.log_dir / "count-sync.log").open("ab") as out:
        env = {**run.healthy.env, "LOG_LEVEL": "debug"}
        subprocess.run([sys.executable, "-m", "counter_cron"], env=env, cwd=ROOT, stdout=out, stderr=out, timeout=120)


def _drive_the_faulty_system(run: Run, token: str) -> None:
    api = Api(run.faulty.base_url, admin_key=run.admin_key)
    answers = [
        api.post(f"/applications/{token}/chats", json={"name": run.canary("chat-503")}),
        api.post(f"/applications/{token}/chats/1/messages", json={"body": run.canary("body-503")}),
        api.get(f"/applications/{token}/chats/1/messages/search", params={"query": "hello"}),
    ]
    for resp in answers:
        assert resp.status_code == 503, resp.text
        run.bodies_503.append(resp.text)


def test_no_secret_reaches_a_log_line_a_traceback_or_a_503_body(run: Run):
    _drive_the_healthy_system(run)
    token = run.tokens[0]
    _drive_the_faulty_system(run, run.tokens[2])  # the rotated application's new token
    # Let the faulty writers retry their broker and the healthy system finish what it was doing.
    wait_for(lambda: any(p.stat().st_size for p in run.faulty.log_dir.glob("*writer.log")), 30, 0.5, "writer logs")
    run.faulty.stop()
    run.healthy.stop()

    logs = {path: path.read_text(errors="replace") for path in run.log_files()}
    assert len(logs) >= 7, sorted(logs)
    logs[Path("metrics")] = run.metrics
    everything = "\n".join(logs.values())
    # The run did produce what is searched: access log lines (with tokens as digests) and a traceback.
    assert f"/applications/{token_ref(token)}/chats" in everything, "no access log line of a tenant route"
    assert "Traceback" in everything, "the forced 500 left no traceback"
    found = [
        (path.name, value[:14] + "…")
        for path, content in logs.items()
        for value in (*run.forbidden, *run.tokens)
        if value in content
    ]
    assert found == [], f"secrets in logs (see {run.healthy.log_dir.parent}): {found}"

    # 503 bodies: what to do, not which host failed.
    for body in run.bodies_503:
        assert "try again in" in body, body
        for leak in ("127.0.0.1", "leaky", "elastic", "amqp", "http", "Error", run.namespace.name):
            assert leak not in body, body


def test_make_run_logs_no_secret(tmp_path):
    """`make run` itself (migrations, then honcho with the Procfile: API, both writers, the webhook dispatcher, the
    periodic count sync), with gunicorn's access log on: its whole output, after creates, reads, a rotation,
    strangers' requests and a signed webhook delivered to a receiver (whose URL carries a query-string secret)."""
    if os.environ.get("API_BASE_URL"):
        pytest.skip("this run starts its own processes; API_BASE_URL is set")
    admin_key = f"adm-{secrets.token_urlsafe(30)}"
    ns = Namespace.create("leakrun", admin_api_key=admin_key)
    user, password, url = _database_user(ns)
    port = _closed_port()
    env = {
        **os.environ,
        **ns.environ(),
        "DATABASE_URL": url,
        "PORT": str(port),
        "GUNICORN_ACCESS_LOG": "-",
        "COUNT_SYNC_EVERY_SECONDS": "2",
        # The receiver below listens on loopback: the deployment's allow-list admits it (as on a developer machine).
        "WEBHOOK_ALLOW_CIDRS": "127.0.0.0/8",
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_LEASE_SECONDS": "3",
    }
    signing_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = Receiver(secrets=[signing_secret])
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    output = tmp_path / "make-run.log"
    with output.open("wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    tokens: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/readyz"), timeout=90, interval=0.5, what="make run's API")
        admin = Api(base, admin_key=admin_key)
        token = admin.new_application("make run")
        tokens.append(token)
        hook = admin.post(f"/applications/{token}/webhooks", json={"url": receiver.url, "secret": signing_secret})
        assert hook.status_code == 201, hook.text
        chat = admin.new_chat(token, "canary-chat")
        admin.wait_message(token, chat, admin.new_message(token, chat, "canary body"))
        admin.get(f"/applications/{token}/chats/{chat}/messages")
        rotated = admin.post(f"/applications/{token}/rotate-token", json={"grace_seconds": 60})
        tokens.append(rotated.json()["token"])
        admin.get(f"/applications/{token}/chats")
        stranger = secrets.token_urlsafe(24)
        tokens.append(stranger)
        Api(base).get(f"/applications/{stranger}/chats")
        Api(base, admin_key="wrong-" + admin_key).get("/applications")
        time.sleep(3)  # one periodic count sync at least
        wait_for(lambda: receiver.received, timeout=60, interval=0.5, what="a webhook from make run's dispatcher")
        assert receiver.unverified == [], receiver.unverified
    finally:
        receiver.stop()
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C does: honcho stops every process
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        ns.destroy()
        _drop_user(user)
    content = output.read_text(errors="replace")
    assert "api.1" in content and "chat-writer.1" in content and "count-sync.1" in content, content[-3000:]
    assert "webhook-dispatcher.1" in content, content[-3000:]
    assert f"/applications/{token_ref(tokens[0])}/chats" in content, "no access log line of a tenant route"
    leaked = [v[:14] + "…" for v in (*tokens, admin_key, password, signing_secret, "query-secret") if v in content]
    assert leaked == [], f"secrets in make run's output ({output}): {leaked}"
