"""RabbitMQ users per component: what each may configure, write and read, as RabbitMQ permission regexes.

The chart's bundled RabbitMQ loads these users at boot (its definitions, ``chat-system.rabbitmqDefinitions`` in the
chart's helpers, which spell the same regexes; tests/chart/test_broker_users.py holds the two equal, and
tests/cluster/test_broker_users.py runs the system on a broker that has exactly these users):

- **api** — publishes creates and edits, declares the topology it publishes to (a work queue is declared with
  its dead-letter route, which RabbitMQ lets only a user with *read* on that queue do), declares the announcement
  exchange and one exclusive server-named queue (``amq.gen-…``) per stream subscriber bound to it, and counts
  queues for ``/status`` (passive declares need no permission). Nothing of the retry tiers or dead letters.
- **writer** — consumes the work queues and their retry tiers (and the tiers of earlier versions it drains),
  publishes retries and messages that are due back, and announcements. No server-named queues.
- **monitor** — KEDA's: passive declares only (a queue's depth), so no permission at all (``^$``), tag
  ``monitoring`` for the management API's read-only views. It can neither publish nor consume: a leaked KEDA
  credential cannot forge or steal a tenant's writes.

Both publishers go through the default exchange (every queue is routed by name), and RabbitMQ checks a publish
against the exchange only: the API's and the writers' users can publish to any queue of the vhost. What the split
removes is everything else — administration (no tags: no user, vhost or policy management), the other
deployments' queues (everything is under ``QUEUE_PREFIX``), the dead letters, and for the API the retry tiers.
The counter-cron and the operator use no broker at all and get no broker credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NOTHING = "^$"


@dataclass(frozen=True)
class Permissions:
    """One user's permissions on the vhost, and its tags."""

    configure: str
    write: str
    read: str
    tags: str = ""


def quote_meta(text: str) -> str:
    """``text`` as a literal in a regex, escaped as Go's ``regexp.QuoteMeta`` (Helm's ``regexQuoteMeta``) does, so
    that the chart renders the very same strings."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def permissions(prefix: str) -> dict[str, Permissions]:
    """The users of a deployment whose queues are named under ``prefix`` (``QUEUE_PREFIX``), by role."""
    p = quote_meta(prefix)
    work = rf"{p}\.(chats|messages)"
    tiers = r"\.delay\.[0-9]+s"
    legacy = r"\.retry\.[0-9]+s"
    announcements = rf"{p}\.announcements"
    return {
        "api": Permissions(
            configure=rf"^({work}(\.dead|{tiers})?|{announcements}|amq\.gen-.*)$",
            write=r"^(amq\.default|amq\.gen-.*)$",
            read=rf"^({work}|{announcements}|amq\.gen-.*)$",
        ),
        "writer": Permissions(
            configure=rf"^({work}(\.dead|{tiers}|{legacy})?|{announcements})$",
            write=rf"^(amq\.default|{announcements})$",
            read=rf"^{work}({tiers}|{legacy})?$",
        ),
        "monitor": Permissions(configure=NOTHING, write=NOTHING, read=NOTHING, tags="monitoring"),
    }
