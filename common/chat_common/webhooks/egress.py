"""Where a webhook may be delivered: public addresses only, unless the deployment's allow-list says otherwise.

A tenant chooses its endpoint's URL, and the dispatcher runs inside the cluster: without a rule, a URL naming
``127.0.0.1``, ``169.254.169.254`` (cloud metadata), a pod or service address or a private network would make the
dispatcher a proxy into places the tenant cannot reach (server-side request forgery). So:

- A URL is ``https://`` (``http://`` only where :attr:`EgressPolicy.allow_http`), with a host, no user or password,
  no fragment, at most 2,048 characters.
- Every address its host resolves to must be public: not loopback, link-local, private (RFC 1918, ULA), shared
  (100.64/10), multicast, reserved or unspecified, nor in the deployment's extra denied networks (the cluster's pod
  and service ranges, ``WEBHOOK_DENY_CIDRS``) — unless it is in ``WEBHOOK_ALLOW_CIDRS`` (tests and on-premises
  receivers). The check is on the addresses the dispatcher then connects to (its resolver pins them), so a name that
  resolves to a public address when registered and to a private one later (DNS rebinding) is refused at delivery.
- Redirects are never followed and response bodies are read only up to a limit (the dispatcher's side).

The registration checks what it can without resolving (:meth:`EgressPolicy.check_url`: the shape, and a literal
address or ``localhost``); the dispatcher checks every resolved address (:meth:`EgressPolicy.refusal`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from chat_common.validation import Invalid

MAX_URL_CHARS = 2048
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not "private" to Python, not public either


def _networks(text: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); :class:`ValueError` on anything else."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The deployment's rule for webhook targets (module docstring)."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = field(default=())
    allow_http: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> EgressPolicy:
        """``WEBHOOK_ALLOW_CIDRS``, ``WEBHOOK_DENY_CIDRS`` (comma-separated) and ``WEBHOOK_ALLOW_HTTP`` (true/false)."""
        env = os.environ if environ is None else environ
        return cls(
            allow=_networks(env.get("WEBHOOK_ALLOW_CIDRS", "")),
            deny=_networks(env.get("WEBHOOK_DENY_CIDRS", "")),
            allow_http=env.get("WEBHOOK_ALLOW_HTTP", "false").strip().lower() in ("1", "true", "yes"),
        )

    def refusal(self, address: str | Address) -> str | None:
        """Why the dispatcher must not connect to ``address`` (None: it may)."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if any(ip in network for network in self.allow):
            return None
        if any(ip in network for network in self.deny):
            return f"{ip} is in a network this deployment denies"
        for test, kind in (
            (ip.is_loopback, "a loopback"),
            (ip.is_link_local, "a link-local"),
            (ip.is_multicast, "a multicast"),
            (ip.is_unspecified, "the unspecified"),
            (ip.is_reserved, "a reserved"),
            (ip.is_private or ip in _SHARED, "a private"),
        ):
            if test:
                return f"{ip} is {kind} address"
        if not ip.is_global:
            return f"{ip} is not a public address"
        return None

    def check_url(self, url: object) -> str:
        """The URL, if its shape may be registered; :class:`Invalid` (a 422) saying why not.

        What needs no DNS is checked here: scheme, host, credentials, a literal address or ``localhost``. Names are
        resolved and checked by the dispatcher at every connection.
        """
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or not url.isascii():
            raise Invalid(f"url must be an absolute https URL of at most {MAX_URL_CHARS} ASCII characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise Invalid("url is not a valid URL") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise Invalid("url must use https" + (" or http" if self.allow_http else ""))
        host = parts.hostname
        if not host:
            raise Invalid("url must name a host")
        if parts.username is not None or parts.password is not None:
            raise Invalid("url must not carry a user or password (sign with the endpoint's secret instead)")
        if parts.fragment:
            raise Invalid("url must not have a fragment")
        if port == 0:
            raise Invalid("url has no valid port")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is None and (host == "localhost" or host.endswith(".localhost")):
            literal = ipaddress.ip_address("127.0.0.1")
        if literal is not None and (why := self.refusal(literal)):
            raise Invalid(f"url is refused: {why} (webhooks go to public addresses unless the deployment allows it)")
        return url
