"""The Sentinel mode's shell scripts, run with sh against real redis-server and Sentinel processes on loopback.

Each pod of the StatefulSet becomes a loopback address of its own (pod N: 127.0.0.(20+N)), with the same private
ports for all, and its volumes become directories: the scripts' ``host`` function, port variables and paths are
the only lines rewritten. What is shown: the init container takes the master from the other pods' Sentinels and
only from a valid answer; a restarted master comes back as master with its data and waits for the failover
without; when no Sentinel answers (every pod restarts) the master the Sentinels last named wins over pod -0; the
Sentinel's readiness probe keeps that record; the pre-stop hook has the Sentinels promote a replica before the
master stops.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chat_devtools.ports import free_port
from tests.chart.conftest import rendered

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed on this machine"
)
PASSWORD = "pw-0123"
MASTER_NAME = "chat"
POD = "chat-chat-system-redis-{}"


def address(pod: int) -> str:
    return f"127.0.0.{20 + pod}"


class Loopback:
    """Private ports, the pods' directories, and the processes started for one test (killed at the end)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis_port = free_port()
        self.sentinel_port = free_port()
        self.processes: list[subprocess.Popen] = []

    def run_dir(self, pod: int) -> Path:
        path = self.root / f"pod-{pod}" / "run"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_dir(self, pod: int) -> Path:
        path = self.root / f"pod-{pod}" / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def script(self, text: str, pod: int) -> str:
        """A script of the chart as it would run in pod ``pod``, on loopback."""
        lines = []
        for line in text.splitlines():
            if line.startswith("host() {"):
                line = "host() { printf '127.0.0.%s' \"$((20 + $1))\"; }"
            elif line == "redis_port=6379":
                line = f"redis_port={self.redis_port}"
            elif line == "sentinel_port=26379":
                line = f"sentinel_port={self.sentinel_port}"
            lines.append(line)
        script = (
            "\n".join(lines).replace("/run/redis", str(self.run_dir(pod))).replace("/data", str(self.data_dir(pod)))
        )
        # redis-cli without -h talks to this pod's own processes.
        return script.replace('redis-cli -p "$sentinel_port"', f'redis-cli -h {address(pod)} -p "$sentinel_port"')

    def run(self, text: str, pod: int, timeout: float = 60) -> subprocess.CompletedProcess:
        env = {
            "PATH": os.environ["PATH"],
            "POD_NAME": POD.format(pod),
            "REDIS_PASSWORD": PASSWORD,
            "REDISCLI_AUTH": PASSWORD,
        }
        return subprocess.run(
            ["sh", "-c", self.script(text, pod)], env=env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *args: str) -> None:
        self.processes.append(
            subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    def start_redis(self, pod: int, *extra: str) -> redis.Redis:
        self.start(
            "--bind",
            address(pod),
            "--port",
            str(self.redis_port),
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.data_dir(pod)),
            "--replica-announce-ip",
            address(pod),
            *extra,
        )
        return self.wait(redis.Redis(host=address(pod), port=self.redis_port, password=PASSWORD, socket_timeout=1))

    def start_sentinel(self, pod: int, master: int, quorum: int = 2, config: str = "") -> redis.Redis:
        conf = self.run_dir(pod) / "test-sentinel.conf"
        conf.write_text(
            f"bind {address(pod)}\nport {self.sentinel_port}\ndir {self.run_dir(pod)}\n"
            f"sentinel announce-ip {address(pod)}\nrequirepass {PASSWORD}\nsentinel sentinel-pass {PASSWORD}\n"
            f"sentinel monitor {MASTER_NAME} {address(master)} {self.redis_port} {quorum}\n"
            f"sentinel auth-pass {MASTER_NAME} {PASSWORD}\nsentinel down-after-milliseconds {MASTER_NAME} 2000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n{config}"
        )
        self.start(str(conf), "--sentinel")
        return self.wait(redis.Redis(host=address(pod), port=self.sentinel_port, password=PASSWORD, socket_timeout=1))

    @staticmethod
    def wait(client: redis.Redis, seconds: float = 15) -> redis.Redis:
        deadline = time.monotonic() + seconds
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the process did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Loopback]:
    net = Loopback(tmp_path)
    yield net
    net.stop()


def _pod_template() -> dict:
    (sts,) = [m for m in rendered("redis-sentinel") if m.kind == "StatefulSet" and m.name.endswith("-redis")]
    return sts.obj["spec"]["template"]["spec"]


def _init_script() -> str:
    (init,) = _pod_template()["initContainers"]
    return init["command"][-1]


def _pre_stop_script() -> str:
    redis_container = next(c for c in _pod_template()["containers"] if c["name"] == "redis")
    return redis_container["lifecycle"]["preStop"]["exec"]["command"][-1]


def _sentinel_probe() -> str:
    sentinel = next(c for c in _pod_template()["containers"] if c["name"] == "sentinel")
    return sentinel["readinessProbe"]["exec"]["command"][-1]


def _followed(loopback: Loopback, pod: int) -> str | None:
    """The master the redis.conf the init container wrote makes this pod follow (None: it is the master)."""
    conf = (loopback.run_dir(pod) / "redis.conf").read_text()
    lines = [line.split() for line in conf.splitlines() if line.startswith("replicaof ")]
    return lines[0][1] if lines else None


def _monitored(loopback: Loopback, pod: int) -> str:
    conf = (loopback.run_dir(pod) / "sentinel.conf").read_text()
    (line,) = [line.split() for line in conf.splitlines() if line.startswith("sentinel monitor ")]
    return line[3]


def test_the_first_start_makes_pod_0_master_and_the_others_follow(loopback: Loopback):
    assert loopback.run(_init_script(), pod=0).returncode == 0
    assert _followed(loopback, 0) is None
    assert loopback.run(_init_script(), pod=1).returncode == 0
    assert _followed(loopback, 1) == address(0) and _monitored(loopback, 1) == address(0)


def test_an_error_reply_is_not_taken_for_the_masters_name(loopback: Loopback):
    """redis-cli prints an error reply on stdout, exit status 0; it named the master "ERR" before."""
    loopback.start(
        "--bind",
        address(1),
        "--port",
        str(loopback.sentinel_port),
        "--requirepass",
        PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
    )  # a plain Redis where a Sentinel should answer
    loopback.wait(redis.Redis(host=address(1), port=loopback.sentinel_port, password=PASSWORD))
    done = loopback.run(_init_script(), pod=2)
    assert done.returncode == 0, done.stderr
    assert "names no master of ours: ERR" in done.stderr
    assert _followed(loopback, 2) == address(0)  # no valid answer, no record: the first start's master


def test_a_pod_follows_the_master_the_sentinels_name(loopback: Loopback):
    loopback.start_sentinel(1, master=2)
    assert loopback.run(_init_script(), pod=0).returncode == 0
    assert _followed(loopback, 0) == address(2) and _monitored(loopback, 0) == address(2)
    assert (loopback.data_dir(0) / "chat-system-master").read_text().strip() == address(2)


def test_a_restarted_master_with_its_data_serves_again(loopback: Loopback):
    loopback.start_sentinel(0, master=2)
    aof = loopback.data_dir(2) / "appendonlydir"
    aof.mkdir()
    (aof / "appendonly.aof.1.incr.aof").write_text("")
    assert loopback.run(_init_script(), pod=2).returncode == 0
    assert _followed(loopback, 2) is None  # its replicas still follow it and catch up


def test_a_restarted_master_without_its_data_waits_for_the_failover(loopback: Loopback):
    loopback.start_sentinel(0, master=2)
    script = _init_script().replace('[ "$waited" -lt 35 ]', '[ "$waited" -lt 2 ]')
    done = loopback.run(script, pod=2)
    assert done.returncode == 1, done.stdout  # the kubelet retries it; as master it would empty the replicas
    assert "waiting for their failover" in done.stderr
    assert not (loopback.run_dir(2) / "redis.conf").exists()


def test_after_every_pod_restarted_the_last_master_named_wins_over_pod_0(loopback: Loopback):
    (loopback.data_dir(0) / "chat-system-master").write_text(address(2) + "\n")
    done = loopback.run(_init_script(), pod=0)
    assert done.returncode == 0 and "from: record" in done.stdout
    assert _followed(loopback, 0) == address(2)


def test_the_sentinels_readiness_probe_keeps_the_record(loopback: Loopback):
    loopback.start_sentinel(1, master=2)
    record = loopback.data_dir(1) / "chat-system-master"
    assert loopback.run(_sentinel_probe(), pod=1).returncode == 0
    assert record.read_text().strip() == address(2)
    loopback.stop()
    assert loopback.run(_sentinel_probe(), pod=1).returncode != 0  # not ready without its Sentinel


def test_the_init_scripts_configs_start_redis_and_a_sentinel(loopback: Loopback):
    """What the init container writes is accepted by redis-server and by a Sentinel."""
    assert loopback.run(_init_script(), pod=0).returncode == 0
    run = loopback.run_dir(0)
    assert oct((run / "sentinel.conf").stat().st_mode & 0o777) == "0o600"
    loopback.start(
        str(run / "redis.conf"),
        "--bind",
        address(0),
        "--port",
        str(loopback.redis_port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(loopback.data_dir(0)),
    )
    master = loopback.wait(redis.Redis(host=address(0), port=loopback.redis_port, password=PASSWORD))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=address(0), port=loopback.redis_port).ping()
    conf = (run / "sentinel.conf").read_text() + f"bind {address(0)}\n"
    (run / "sentinel.conf").write_text(conf)
    loopback.start(str(run / "sentinel.conf"), "--sentinel")
    sentinel = loopback.wait(redis.Redis(host=address(0), port=loopback.sentinel_port, password=PASSWORD))
    host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
    assert (host.decode(), int(port)) == (address(0), loopback.redis_port)
    assert master.info("replication")["role"] == "master"


def test_the_master_has_a_replica_promoted_before_it_stops(loopback: Loopback):
    """A rolling update stops every pod once: the master's pre-stop hook asks another pod's Sentinel for a
    planned failover and returns once the Sentinels name the new master."""
    loopback.start_redis(0)
    replica = loopback.start_redis(1, "--replicaof", address(0), str(loopback.redis_port))
    sentinels = [loopback.start_sentinel(pod, master=0) for pod in range(3)]
    deadline = time.monotonic() + 40
    while True:  # the Sentinels learn the replica from the master's INFO, and each other from hello messages
        known = sentinels[1].execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        peers = sentinels[1].execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
        if known and len(peers) == 2 and replica.info("replication").get("master_link_status") == "up":
            break
        assert time.monotonic() < deadline, "the Sentinels did not discover the replica and each other"
        time.sleep(0.5)
    started = time.monotonic()
    done = loopback.run(_pre_stop_script(), pod=0)
    assert done.returncode == 0, done.stderr
    host, _ = sentinels[2].execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
    assert host.decode() == address(1)
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10
    while replica.info("replication")["role"] != "master":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_the_pre_stop_hook_leaves_a_replica_alone(loopback: Loopback):
    loopback.start_sentinel(0, master=2)
    started = time.monotonic()
    assert loopback.run(_pre_stop_script(), pod=1).returncode == 0
    assert time.monotonic() - started < 10
