"""The reconciler's tenant management where MySQL and Redis themselves matter: usage as the count sync and the
numbering report it, and a suspension while the database is down. The rules of the management fields
(suspended, rotateToken, previousTokenGraceSeconds, limits) run on fakes in tests/operator/rules/.
"""

from __future__ import annotations

import base64

import pytest
from prometheus_client import REGISTRY

from chat_operator import kube
from chat_operator.reconciler import READY, Reconciler
from tests.operator.conftest import API_URL
from tests.operator.rows import add_chats
from tests.operator.test_reconciler import bump, run


def secret_data(apiserver, body: dict) -> dict[str, str]:
    secret = apiserver.get(body["metadata"]["namespace"], kube.secret_name(body["metadata"]["name"]))
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def gauge(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_usage_and_last_activity_reach_the_status(reconciler, applications, provisioned, op_engine, op_redis, keys):
    body, app = provisioned
    add_chats(op_engine, op_redis, keys, app.id, [2])
    op_redis.hset(keys.numbers(app.id), mapping={"id": app.id, "chats": 1, "at": 1_700_000_000})
    from counter_cron.sync import CountSync

    CountSync(op_engine, op_redis, keys).run()
    outcome = run(reconciler.refresh, body)
    assert outcome.status["chatsCount"] == 1 and outcome.status["messagesCount"] == 2
    assert outcome.status["lastActivityAt"] == "2023-11-14T22:13:20Z"
    # Persisted in MySQL too: it survives Redis losing its data.
    op_redis.delete(keys.numbers(app.id))
    assert applications.usage(app.id).last_activity_at == pytest.approx(1_700_000_000, abs=1)


def test_the_database_being_down_during_a_suspension_is_retried(apiserver, op_redis, keys, secrets, provisioned):
    from sqlalchemy import create_engine

    from chat_common.tenancy.applications import Applications
    from chat_operator.provisioning import Provisioner

    body, _ = provisioned
    dead = create_engine("mysql+pymysql://root@127.0.0.1:1/nothing", connect_args={"connect_timeout": 2})
    down = Reconciler(Provisioner(Applications(dead, op_redis, keys)), secrets, API_URL)
    outcome = run(down.apply, bump(body, suspended=True), retry=1)
    assert outcome.failure == "Unavailable" and outcome.retry_after == 10 and not outcome.permanent
    assert body["status"]["phase"] == READY  # the tenant itself still works
