"""Numbering: every chat and message number (and edit version) is handed out here, exactly once.

The service asks for "a number for this create" (or "a version for this edit") through one port,
:class:`chat_api.ports.NumbersPort`, which :class:`Numberer` implements over smaller ports:

- :mod:`chat_api.numbering.allocation` — one numbering call, loading counters from MySQL or waiting out a recovery;
- :mod:`chat_api.numbering.idempotency` — a create with an ``Idempotency-Key`` gets the number its first request got;
- :mod:`chat_api.numbering.epochs` — what a slot's epoch says (fresh, or recovered after a loss, and when);
- :mod:`chat_api.numbering.reopening` — when a lost slot may re-open (pure; its I/O: ``chat_api.adapters.recovery``).

Every answer is a :class:`chat_api.model.Numbered` carrying the stamp its publish must carry.
"""

from chat_api.numbering.numberer import Numberer

__all__ = ["Numberer"]
