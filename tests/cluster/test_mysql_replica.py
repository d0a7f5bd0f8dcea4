"""The system on a MariaDB primary with an asynchronous read replica of its own (GTID replication on loopback).

Real processes (API, writers) with ``DATABASE_URL`` on the primary and ``DATABASE_READ_URL`` on the replica. To
see which server answered, the tests write a few rows on the replica only (rows the primary never gets): a page
that shows them came from the replica, one that does not from the primary. What must hold:

- pages of chats and messages and the embedded search read from a healthy replica; single reads, numbering (the
  last number written) and tenant lookups read the primary;
- a client that edited reads its edit back at once, from the primary, while other tenants keep reading the
  replica; once the edit is older than the replica's lag bound the editor is back on the replica;
- a replica that stops applying, or dies, sets itself aside: reads answer 200 from the primary (never a 503),
  and it serves again once it replicates again.

Redis and RabbitMQ are the shared ones, isolated by the test's own key prefix and queue names.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import make_url

from chat_devtools.http import Api, wait_for
from chat_devtools.namespace import Namespace
from chat_devtools.private_services import ReplicationPrimary, ReplicationReplica, mariadb_unavailable_reason
from chat_devtools.processes import System
from tests.cluster.conftest import skip_unless_servers_start_here
from tests.conftest import LOG_ROOT

pytestmark = pytest.mark.slow

ONLY_ON_REPLICA = 900  # message and chat numbers the primary never reaches in these tests
PLANTED_IDS = 10**9  # row ids of the planted rows (the primary's auto-increment never gets there)


@dataclass
class Deployment:
    primary: ReplicationPrimary
    replica: ReplicationReplica
    namespace: Namespace
    system: System
    api: Api

    @property
    def database(self) -> str:
        return make_url(self.namespace.settings.database_url).database

    def on_replica(self, *statements: str) -> list[dict]:
        return self.replica.sql(f"USE `{self.database}`", *statements)

    def replicated(self) -> bool:
        """The replica runs both replication threads and has applied everything the primary has written."""
        status = self.replica.replication_status()
        if (status.get("Slave_IO_Running"), status.get("Slave_SQL_Running")) != ("Yes", "Yes"):
            return False
        applied = self.replica.sql("SELECT @@gtid_slave_pos AS position")[0]["position"]
        return applied == self.primary.gtid_position()

    def tenant(self, messages: int = 3) -> tuple[str, int]:
        """A new application with chat 1 holding ``messages`` messages, on both servers; (token, application id)."""
        token = self.api.new_application("replicated")
        assert self.api.new_chat(token) == 1
        for i in range(messages):
            self.api.new_message(token, 1, f"hello number {i + 1}")
        self.api.wait_message(token, 1, messages)
        wait_for(self.replicated, 15, what="the replica to catch up")
        (row,) = self.on_replica(f"SELECT id FROM applications WHERE token_digest = SHA2('{token}', 256)")
        return token, int(row["id"])

    def plant(self, application_id: int) -> None:
        """A chat and a message that only the replica holds. Their numbers and row ids are ones the primary never
        writes: a replicated row with the same key would stop replication."""
        row_id = PLANTED_IDS + application_id
        self.on_replica(
            "INSERT INTO chats (id, application_id, number, name) "
            f"VALUES ({row_id}, {application_id}, {ONLY_ON_REPLICA}, 'replica chat')",
            "INSERT INTO messages (id, application_id, chat_id, number, body) "
            f"SELECT {row_id}, {application_id}, id, {ONLY_ON_REPLICA}, 'hello from the replica only' FROM chats "
            f"WHERE application_id = {application_id} AND number = 1",
        )

    def page_source(self, token: str) -> str:
        """Which server answered a page of the tenant's chat 1 ("replica" or "primary")."""
        resp = self.api.get(f"/applications/{token}/chats/1/messages", params={"per_page": 100})
        assert resp.status_code == 200, resp.text
        return "replica" if ONLY_ON_REPLICA in [m["message_number"] for m in resp.json()] else "primary"


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    skip_unless_servers_start_here("a MariaDB primary and replica", mariadb_unavailable_reason)
    root = LOG_ROOT / f"mariadb-replication-{uuid.uuid4().hex[:8]}"
    primary, replica = ReplicationPrimary(root), ReplicationReplica(root)
    system = namespace = None
    try:
        primary.start()
        replica.start()
        replica.follow(primary)
        database = f"cs_rpl_{uuid.uuid4().hex[:10]}"
        primary_url = make_url(primary.url).set(database=database).render_as_string(hide_password=False)
        replica_url = make_url(replica.url).set(database=database).render_as_string(hide_password=False)
        namespace = Namespace.create("rpl", database_url=primary_url)  # migrated on the primary, replicated
        env = {"DATABASE_READ_URL": replica_url, "DATABASE_READ_MAX_LAG_SECONDS": "5", "TENANT_CACHE_SECONDS": "0.5"}
        system = System(namespace, root / "system", api_workers=2, extra_env=env).start()
        yield Deployment(primary, replica, namespace, system, Api(system.base_url))
    finally:
        if system is not None:
            system.stop()
        if namespace is not None:  # its queues are on the shared broker: delete them (and its database, keys)
            namespace.destroy()
        replica.stop()
        primary.stop()
        for server in (primary, replica):  # keep the servers' logs, drop their data
            shutil.rmtree(server.dir / "data", ignore_errors=True)


@pytest.fixture
def healthy(deployment: Deployment) -> Deployment:
    """The deployment with the replica running and applying (a test before may have stopped it)."""
    if not deployment.replica.running:
        deployment.replica.start()
    deployment.replica.sql("START SLAVE")
    wait_for(deployment.replicated, 30, what="the replica replicating again")
    return deployment


def test_pages_and_search_read_the_replica_single_reads_and_numbering_the_primary(healthy: Deployment):
    d = healthy
    token, app = d.tenant()
    d.plant(app)
    base = f"/applications/{token}"
    wait_for(lambda: d.page_source(token) == "replica", 10, what="pages served by the replica")
    chats = d.api.get(f"{base}/chats").json()
    assert [c["chat_number"] for c in chats] == [1, ONLY_ON_REPLICA]
    found = d.api.get(f"{base}/chats/1/messages/search", params={"query": "replica only"}).json()
    assert [m["message_number"] for m in found] == [ONLY_ON_REPLICA]  # the embedded search, on the replica
    # Single reads are the primary's: the planted rows do not exist there.
    assert d.api.get(f"{base}/chats/{ONLY_ON_REPLICA}").status_code == 404
    assert d.api.get(f"{base}/chats/1/messages/{ONLY_ON_REPLICA}").status_code == 404
    assert d.api.get(f"{base}/chats/1/messages/1").json()["body"] == "hello number 1"
    # Numbering loads from the primary: chat 2 follows the primary's chat 1, not the replica's chat 900.
    d.namespace.flush_redis()  # counters forgotten: the next create loads them from MySQL
    wait_for(d.system.numbering_open, 30, what="numbering open again")
    assert d.api.new_chat(token) == 2


def test_an_editor_reads_its_edit_back_at_once_while_other_tenants_stay_on_the_replica(healthy: Deployment):
    d = healthy
    editor, editor_app = d.tenant()
    other, other_app = d.tenant()
    d.plant(editor_app)
    d.plant(other_app)
    wait_for(lambda: d.page_source(editor) == "replica" == d.page_source(other), 10, what="replica pages")
    resp = d.api.patch(f"/applications/{editor}/chats/1/messages/2", json={"body": "edited just now"})
    assert resp.status_code == 200, resp.text
    edited_at = time.monotonic()
    page = d.api.get(f"/applications/{editor}/chats/1/messages").json()
    assert [m["body"] for m in page] == ["hello number 1", "edited just now", "hello number 3"]  # primary, no 900
    assert d.page_source(other) == "replica"
    # Back on the replica once the edit is older than the replica's lag bound (lag 0 + 1 s + the probe's age).
    wait_for(lambda: d.page_source(editor) == "replica", 10, what="the editor's pages back on the replica")
    assert time.monotonic() - edited_at >= 1.0


def test_a_replica_that_stops_applying_or_dies_is_set_aside_and_taken_back(healthy: Deployment):
    d = healthy
    token, app = d.tenant()
    d.plant(app)
    wait_for(lambda: d.page_source(token) == "replica", 10, what="replica pages")

    d.replica.sql("STOP SLAVE SQL_THREAD")  # receiving, not applying: its answers would grow stale
    wait_for(lambda: d.page_source(token) == "primary", 10, what="pages from the primary")
    d.api.new_message(token, 1, "written while the replica stands still")
    d.api.wait_message(token, 1, 4)
    assert len(d.api.get(f"/applications/{token}/chats/1/messages").json()) == 4  # the primary's rows, current
    d.replica.sql("START SLAVE SQL_THREAD")
    wait_for(lambda: d.page_source(token) == "replica", 15, what="the replica serving again")

    d.replica.kill()
    answers = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # from the moment it died: every read answers, none a 503
        answers.append(d.api.get(f"/applications/{token}/chats/1/messages").status_code)
    assert set(answers) == {200}, answers
    assert d.page_source(token) == "primary"
    d.replica.start()
    wait_for(d.replicated, 30, what="the restarted replica catching up")
    wait_for(lambda: d.page_source(token) == "replica", 15, what="the restarted replica serving again")
