"""TLS options of the connection URLs, read once for every client: MySQL (``chat_common.clients.db.mysql_target``),
Redis (``chat_common.clients.redis_client``) and Elasticsearch (``chat_common.search.elastic.client_options``).

What must hold: an option in the URL reaches every client (the API's asyncmy pool too); verification is always on
and cannot be turned off by a URL; a typo is refused rather than meaning cleartext. The handshakes themselves are
checked against real servers in tests/cluster/test_tls_services.py (MySQL, Redis) and test_broker_tls.py (RabbitMQ);
Elasticsearch is not installed on this machine, so its clients are checked here by their construction only.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from chat_api.adapters.database import Database
from chat_common.clients.db import connect_args, mysql_target
from chat_common.clients.redis_client import RedisUrlError, parse_redis_url, sync_client
from chat_common.search.elastic import client_options
from chat_devtools.tinyca import TinyCA

BASE = "mysql+pymysql://chat:secret@db.example:3306/chat_system?charset=utf8mb4"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    authority = TinyCA("chat-system unit test CA")
    authority.save(directory, "ca")
    authority.issue(directory, "client", common_name="chat", client=True)
    return directory


def test_a_url_without_tls_options_has_no_context():
    url, context = mysql_target(BASE)
    assert context is None and url.query == {"charset": "utf8mb4"}


def test_ssl_ca_verifies_certificate_and_host_name(ca: Path):
    url, context = mysql_target(f"{BASE}&ssl_ca={ca / 'ca.crt'}")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert dict(url.query) == {"charset": "utf8mb4"}  # the options do not reach the driver as unknown arguments
    assert len(context.get_ca_certs()) == 1  # the named CA (alone: not the system store)


def test_any_tls_option_without_a_ca_still_verifies_with_the_system_store(ca: Path):
    # PyMySQL alone turns verification off when no CA is named (ssl_cert without ssl_ca); this system never does.
    for query in ("ssl=true", f"ssl_cert={ca / 'client.crt'}&ssl_key={ca / 'client.key'}", "ssl_cipher=ECDHE+AESGCM"):
        _, context = mysql_target(f"{BASE}&{query}")
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname, query


def test_only_the_host_name_check_can_be_relaxed(ca: Path):
    _, context = mysql_target(f"{BASE}&ssl_ca={ca / 'ca.crt'}&ssl_check_hostname=false")
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    with pytest.raises(ValueError, match="ssl_verify_cert=false is refused"):
        mysql_target(f"{BASE}&ssl_ca={ca / 'ca.crt'}&ssl_verify_cert=false")


@pytest.mark.parametrize("query", ["ssl_mode=REQUIRED", "ssl_ca_file=/x", "sslca=/x", "ssl=maybe", "ssl_key=/k"])
def test_unknown_or_incomplete_tls_options_are_refused(query: str):
    with pytest.raises(ValueError, match="DATABASE_URL") as refused:
        mysql_target(f"{BASE}&{query}")
    assert "secret" not in str(refused.value)  # never the password


def test_the_engines_and_the_api_pool_get_the_same_context(ca: Path):
    url = f"{BASE}&ssl_ca={ca / 'ca.crt'}"
    engine_url, args = connect_args(url, connect_timeout=5)
    assert isinstance(args["ssl"], ssl.SSLContext) and args["connect_timeout"] == 5
    assert "ssl_ca" not in engine_url.query
    pool = Database(url)  # the asyncmy read path, which used to read only charset from the URL
    assert isinstance(pool.connect_args.get("ssl"), ssl.SSLContext)
    assert pool.connect_args["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert pool.connect_args["charset"] == "utf8mb4"


def test_redis_ca_reaches_sentinel_and_cluster_clients():
    target = parse_redis_url("rediss+cluster://:pw@h1:7000,h2:7001?ssl_ca_certs=/etc/tls/redis/ca.crt")
    assert target.ssl and target.ssl_ca_certs == "/etc/tls/redis/ca.crt"
    target = parse_redis_url("rediss+sentinel://h1:26379/mymaster?ssl_ca_certs=/ca.crt")
    assert target.ssl_ca_certs == "/ca.crt"
    client = sync_client("rediss://:pw@h1:6380/0?ssl_ca_certs=/ca.crt")  # plain: redis-py reads it itself
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "/ca.crt"


@pytest.mark.parametrize(
    "url",
    [
        "rediss://h:6380/0?ssl_cert_reqs=none",
        "rediss://h:6380/0?ssl_check_hostname=false",
        "rediss+cluster://h1:7000?ssl_cert_reqs=optional",
    ],
)
def test_redis_urls_cannot_turn_verification_off(url: str):
    with pytest.raises(RedisUrlError, match="refused"):
        parse_redis_url(url)


def test_elasticsearch_https_uses_the_ca_and_always_verifies(ca: Path):
    options = client_options("https://chat:pw@es.example:9200", str(ca / "ca.crt"))
    assert options["verify_certs"] is True and options["ca_certs"] == str(ca / "ca.crt")
    from elasticsearch import Elasticsearch

    client = Elasticsearch(**options)  # the real client accepts them (no connection is made)
    node = client.transport.node_pool.get()
    assert node.config.scheme == "https" and node.config.verify_certs and node.config.ca_certs == str(ca / "ca.crt")
    client.close()


def test_elasticsearch_ca_with_a_cleartext_url_is_refused(ca: Path):
    with pytest.raises(ValueError, match="not https"):
        client_options("http://es.example:9200", str(ca / "ca.crt"))
    assert "ca_certs" not in client_options("http://es.example:9200")
