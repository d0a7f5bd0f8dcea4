"""Numbering epochs: what the epoch value of a slot says, and what idempotency may conclude from it (no I/O).

An epoch is ``<id>:fresh|recovered:<unix time>``: written when a slot opened for the first time (``fresh``) or
re-opened after Redis lost its data (``recovered``, :mod:`chat_api.numbering.reopening`); '' while numbering is closed.
"""

from __future__ import annotations

import uuid

from chat_common.wire.idempotency import KEY_LIFETIME_SECONDS

FRESH, RECOVERED = "fresh", "recovered"


def new_epoch(kind: str, now: float) -> str:
    """An epoch value: unique, and saying whether it opened a new system or followed a loss, and when."""
    return f"{uuid.uuid4().hex}:{kind}:{int(now)}"


def keys_may_be_forgotten(epoch: str, now: float) -> bool:
    """True when Redis may have lost idempotency keys younger than their lifetime: a loss was recovered less
    than a key lifetime ago, numbering is closed (''), or the epoch does not say (written by an older version)."""
    _, kind, opened = [*epoch.split(":"), "", "", ""][:3]
    if kind == FRESH:
        return False
    if kind == RECOVERED and opened.isdigit():
        return now - int(opened) < KEY_LIFETIME_SECONDS
    return True
