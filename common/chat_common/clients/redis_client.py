"""One factory for every Redis client of the system, blocking and asyncio, chosen by ``REDIS_URL``.

Three deployments, each through redis-py's own client for it:

- a plain server: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket),
  as ``redis.Redis.from_url`` reads it;
- Redis Sentinel: ``redis+sentinel://[[user]:password@]h1:26379,h2:26379/<service>[/<db>]``
  (``rediss+sentinel://`` for TLS). The clients ask the sentinels for the current master of ``<service>``
  (``Sentinel(...).master_for``) and follow it across a failover. The credentials in the URL are the master's;
  ``?sentinel_password=…`` (and ``sentinel_username``) when the sentinels require their own;
- Redis Cluster: ``redis+cluster://[[user]:password@]h1:7000,h2:7001`` (``rediss+cluster://`` for TLS), any
  subset of the nodes: the client discovers the rest and routes each command to the master of its key's slot
  (``RedisCluster``). Keys used together by one script or command share a hash tag (see
  :mod:`chat_common.wire.keys`).

**TLS** (``rediss…`` schemes) always verifies the server's certificate and host name: against the system's CA store,
or the PEM file named by ``?ssl_ca_certs=/path/ca.crt`` (redis-py's own query key, honoured here for the Sentinel and
Cluster forms too, where redis-py's URL parsing does not reach). ``ssl_cert_reqs`` other than ``required`` and
``ssl_check_hostname=false`` are refused: a URL never silently turns verification off.

The caller passes the timeouts it needs (they differ between the request path and background jobs); the
factory only decides which client class carries them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

PLAIN, SENTINEL, CLUSTER = "plain", "sentinel", "cluster"
_SCHEMES = {
    "redis": (PLAIN, False),
    "rediss": (PLAIN, True),
    "unix": (PLAIN, False),
    "redis+sentinel": (SENTINEL, False),
    "rediss+sentinel": (SENTINEL, True),
    "redis+cluster": (CLUSTER, False),
    "rediss+cluster": (CLUSTER, True),
}
DEFAULT_PORTS = {PLAIN: 6379, SENTINEL: 26379, CLUSTER: 6379}


class RedisUrlError(ValueError):
    """``REDIS_URL`` cannot be understood; the message says what is wrong with it."""


@dataclass(frozen=True)
class RedisTarget:
    """What a ``REDIS_URL`` designates (see the module docstring for the forms)."""

    mode: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_ca_certs: str | None = None  # PEM CA file for rediss… (None: the system's CA store)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def _nodes(netloc: str, mode: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rsplit("@", 1)[-1]
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise RedisUrlError(f"REDIS_URL: empty host in {item!r}")
        if port and not port.isdigit():
            raise RedisUrlError(f"REDIS_URL: port of {item!r} is not a number")
        nodes.append((host, int(port) if port else DEFAULT_PORTS[mode]))
    if not nodes:
        raise RedisUrlError(f"REDIS_URL: a {mode} URL needs at least one host:port")
    return tuple(nodes)


def _refuse_weak_tls(url: str) -> None:
    """:class:`RedisUrlError` for a query that would turn certificate or host-name verification off."""
    query = url.split("?", 1)[1] if "?" in url else ""
    params = {name.lower(): values[-1].lower() for name, values in parse_qs(query).items()}
    if params.get("ssl_cert_reqs", "required") != "required":
        raise RedisUrlError("REDIS_URL: ssl_cert_reqs other than 'required' is refused: certificates are verified")
    if params.get("ssl_check_hostname", "true") in {"0", "false", "no", "off", "n", "f"}:
        raise RedisUrlError("REDIS_URL: ssl_check_hostname=false is refused: the host name is verified")


def parse_redis_url(url: str) -> RedisTarget:
    """Read a ``REDIS_URL`` (plain, sentinel or cluster form); :class:`RedisUrlError` if it is malformed."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        raise RedisUrlError(f"REDIS_URL: unknown scheme {scheme!r}; use one of {', '.join(sorted(_SCHEMES))}")
    mode, ssl = _SCHEMES[scheme]
    _refuse_weak_tls(url)
    if mode == PLAIN:
        return RedisTarget(PLAIN, url, ssl=ssl)
    # urlsplit would choke on a comma-separated host list; take the netloc apart by hand.
    rest, _, query = url.split("://", 1)[1].partition("?")  # the query first: its values may hold "/" (paths)
    netloc, _, path = rest.partition("/")
    userinfo = netloc.rsplit("@", 1)[0] if "@" in netloc else ""
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    target = {
        "mode": mode,
        "url": url,
        "nodes": _nodes(netloc, mode),
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "ssl": ssl,
        "ssl_ca_certs": params.get("ssl_ca_certs"),
        "sentinel_username": params.get("sentinel_username"),
        "sentinel_password": params.get("sentinel_password"),
    }
    parts = [p for p in path.split("/") if p]
    if mode == SENTINEL:
        if not parts:
            raise RedisUrlError("REDIS_URL: a sentinel URL names its service: redis+sentinel://h1:26379,h2/<service>")
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise RedisUrlError("REDIS_URL: a sentinel URL's path is /<service>[/<db number>]")
        return RedisTarget(service=unquote(parts[0]), db=int(parts[1]) if len(parts) == 2 else 0, **target)
    if parts and parts != ["0"]:
        raise RedisUrlError("REDIS_URL: Redis Cluster has one database (0); drop the path from the cluster URL")
    return RedisTarget(**target)


def _credentials(target: RedisTarget) -> dict[str, Any]:
    values: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.ssl:
        values.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        if target.ssl_ca_certs:
            values["ssl_ca_certs"] = target.ssl_ca_certs
    return values


def _sentinel_kwargs(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    values = {name: value for name, value in options.items() if name.startswith("socket_")}
    if target.sentinel_password is not None:
        values.update(username=target.sentinel_username, password=target.sentinel_password)
    if target.ssl:
        values.update(ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        if target.ssl_ca_certs:
            values["ssl_ca_certs"] = target.ssl_ca_certs
    return values


class LazyCluster:
    """A blocking :class:`redis.cluster.RedisCluster` built on first use.

    redis-py's blocking cluster client discovers the cluster in its constructor; building it lazily keeps
    "nothing connects until first use" true for every client this module makes (a process can start while
    Redis is down, and answers 503 meanwhile, as with a plain server).
    """

    def __init__(self, build: Callable[[], redis.cluster.RedisCluster]) -> None:
        self._build = build
        self._client: redis.cluster.RedisCluster | None = None

    @property
    def cluster(self) -> redis.cluster.RedisCluster:
        """The real client (built, and so connected, now if it was not yet)."""
        if self._client is None:
            self._client = self._build()
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    def close(self) -> None:
        """Close the client's connections if it was ever built."""
        if self._client is not None:
            self._client.close()


def sync_client(url: str, **options: Any) -> redis.Redis | LazyCluster:
    """A blocking client for ``url``; ``options`` are connection options (``socket_timeout`` …)."""
    target = parse_redis_url(url)
    if target.mode == PLAIN:
        return redis.Redis.from_url(url, **options)
    if target.mode == SENTINEL:
        sentinel = redis.sentinel.Sentinel(list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options))
        return sentinel.master_for(target.service, db=target.db, **_credentials(target), **options)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
    # Partial coverage: a shard that is down must not stop the clients from serving the others' slots.
    return LazyCluster(
        lambda: redis.cluster.RedisCluster(
            startup_nodes=nodes, require_full_coverage=False, **_credentials(target), **options
        )
    )


def async_client(url: str, **options: Any) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """An asyncio client for ``url`` (nothing connects until first use); ``options`` as for :func:`sync_client`."""
    target = parse_redis_url(url)
    if target.mode == PLAIN:
        return redis.asyncio.Redis.from_url(url, **options)
    if target.mode == SENTINEL:
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, options)
        )
        return sentinel.master_for(target.service, db=target.db, **_credentials(target), **options)
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes]
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=nodes, require_full_coverage=False, **_credentials(target), **options
    )


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client (commands are routed by slot; no multi-slot scripts)."""
    return isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster | LazyCluster)
