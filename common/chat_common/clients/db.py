"""Database engines: one place that knows how this system talks to MySQL/MariaDB.

**TLS.** Every MySQL client of the system — the API's asyncmy pool, the writers', count sync's, operator's and
migrations' SQLAlchemy engines on PyMySQL — reads the TLS options of its URL here (:func:`mysql_target`), so an
option is honoured by all of them or refused by all of them. The query keys are SQLAlchemy's own spelling for its
MySQL dialects (``ssl_ca``, ``ssl_capath``, ``ssl_cert``, ``ssl_key``, ``ssl_cipher``, ``ssl_check_hostname``), plus
PyMySQL's ``ssl_verify_cert`` / ``ssl_verify_identity`` and ``ssl=true`` (TLS trusting the system's CA store)::

    mysql+pymysql://chat:…@db.example:3306/chat_system?charset=utf8mb4&ssl_ca=/etc/chat-system/tls/mysql/ca.crt

Any of them turns TLS on, **always verifying** the server's certificate: against ``ssl_ca``/``ssl_capath``, or the
system's CA store without them (PyMySQL alone would not verify at all when no CA is named). Only the host-name check
can be relaxed (``ssl_check_hostname=false``, e.g. a server reached by an address its certificate does not name);
``ssl_verify_cert=false`` and unknown ``ssl_*`` keys are refused, so a typo never silently means cleartext. A server
whose certificate fails verification is refused: the caller sees a connection failure (the API: 503), never a
fallback to plaintext.
"""

from __future__ import annotations

import ssl
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_TLS_KEYS = {
    "ssl",
    "ssl_ca",
    "ssl_capath",
    "ssl_cert",
    "ssl_key",
    "ssl_cipher",
    "ssl_check_hostname",
    "ssl_verify_cert",
    "ssl_verify_identity",
}


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"DATABASE_URL: {name}={value!r} is not true or false")


def mysql_target(database_url: str | URL) -> tuple[URL, ssl.SSLContext | None]:
    """The URL without its TLS options, and the TLS context they ask for (None: no TLS option in the URL).

    ``ValueError`` (naming the option, never the password) for an option that would weaken verification or that
    this system does not know.
    """
    url = make_url(database_url)
    options = {name: value for name, value in url.query.items() if name.lower().startswith("ssl")}
    if not options:
        return url, None
    values: dict[str, str] = {}
    for name, value in options.items():
        if name.lower() not in _TLS_KEYS:
            raise ValueError(f"DATABASE_URL: unknown TLS option {name!r}; use one of {', '.join(sorted(_TLS_KEYS))}")
        values[name.lower()] = value[-1] if isinstance(value, tuple) else value
    if "ssl" in values and not _flag("ssl", values["ssl"]):
        raise ValueError("DATABASE_URL: ssl=false with other ssl_* options; drop the ssl_* options for cleartext")
    if "ssl_verify_cert" in values and not _flag("ssl_verify_cert", values["ssl_verify_cert"]):
        raise ValueError("DATABASE_URL: ssl_verify_cert=false is refused: the server's certificate is always verified")
    context = ssl.create_default_context(cafile=values.get("ssl_ca"), capath=values.get("ssl_capath"))
    check_hostname = True
    for name in ("ssl_check_hostname", "ssl_verify_identity"):
        if name in values:
            check_hostname = check_hostname and _flag(name, values[name])
    context.check_hostname = check_hostname  # verify_mode stays CERT_REQUIRED either way
    if "ssl_cert" in values:  # a client certificate, for servers that require one (REQUIRE X509)
        context.load_cert_chain(values["ssl_cert"], values.get("ssl_key"))
    elif "ssl_key" in values:
        raise ValueError("DATABASE_URL: ssl_key without ssl_cert")
    if "ssl_cipher" in values:
        context.set_ciphers(values["ssl_cipher"])
    return url.difference_update_query(options), context


def connect_args(database_url: str | URL, **args: Any) -> tuple[URL, dict[str, Any]]:
    """The URL for SQLAlchemy and its ``connect_args``: ``args`` plus the TLS context of the URL, if any."""
    url, context = mysql_target(database_url)
    return url, {**args, "ssl": context} if context is not None else args


def make_engine(database_url: str, *, pool_size: int = 10, read_timeout: float | None = 30, **kwargs: object) -> Engine:
    """An engine with the connection hygiene every service needs.

    READ COMMITTED avoids the gap locks REPEATABLE READ takes on ``INSERT … ON DUPLICATE KEY``,
    which would otherwise make concurrent writer batches deadlock each other. ``read_timeout`` (seconds, None:
    none) bounds the wait for one answer: migrations that rebuild a big table wait longer than services should.
    ``hide_parameters``: an error's text (hence a traceback in a log) never carries a statement's parameters —
    tokens, message bodies, idempotency keys.
    """
    kwargs.setdefault("hide_parameters", True)
    url, args = connect_args(database_url, connect_timeout=5, read_timeout=read_timeout, write_timeout=30)
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
        connect_args=args,
        **kwargs,
    )


def create_database_if_missing(database_url: str) -> bool:
    """Create the URL's database (utf8mb4) when it does not exist. Returns True when it was created."""
    url, args = connect_args(database_url)
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    server = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT", connect_args=args, hide_parameters=True)
    try:
        with server.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"), {"n": name}
            ).first()
            if exists:
                return False
            quoted = name.replace("`", "``")
            conn.execute(
                text(f"CREATE DATABASE IF NOT EXISTS `{quoted}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci")
            )
            return True
    finally:
        server.dispose()


def drop_database(database_url: str) -> None:
    """Drop the URL's database if it exists (tests and benchmarks clean up with this)."""
    url, args = connect_args(database_url)
    server = create_engine(url.set(database=""), isolation_level="AUTOCOMMIT", connect_args=args, hide_parameters=True)
    try:
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{url.database.replace('`', '``')}`"))
    finally:
        server.dispose()
