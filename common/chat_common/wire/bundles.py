"""Bundles: several upserts for one work queue travelling as one AMQP message.

Under load many creates for the same queue are ready in the same event-loop turn of an API worker. Sent one message
each, every create pays its own publish frames, its own confirm, its own Raft entry on every quorum node and its own
delivery and acknowledgement at the writer. The API's publisher (``chat_api.adapters.publisher``) instead sends what
is ready together as one *bundle*, and the writers (``chat_common.writing.consumer``) unpack it into one delivery per
upsert, so everything downstream — the batch handler, poison isolation, retry tiers, announcements — still works per
upsert.

The format, defined here once:

- body: the upserts' own bodies (``chat_common.wire.contracts``, compact JSON objects, which never contain a raw
  newline) joined by ``\\n`` — JSON Lines, split without parsing;
- ``x-bundle``: how many upserts it holds (a check against truncation);
- ``x-published-at-ms-each``: each upsert's publish stamp (``chat_common.writing.batches.PUBLISHED_AT_HEADER``), in
  the same order: numbering recovery reads every upsert's own stamp;
- ``x-published-at-ms``: the lowest of those, as on every message (whatever reads only the message's stamp sees
  its oldest upsert, the conservative answer).

A message without ``x-bundle`` is a single upsert, as every message was before bundles (and as a bundle of one is
still sent), so writers consume both during a rolling upgrade. Writers older than bundles cannot read them: upgrade
the writers before the API turns coalescing on (``PUBLISH_COALESCE``; docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chat_common.wire.stamps import PUBLISHED_AT_HEADER, read_stamp, stamp_header

BUNDLE_HEADER = "x-bundle"
STAMPS_HEADER = "x-published-at-ms-each"
BUNDLE_CONTENT_TYPE = "application/x-ndjson"
SEPARATOR = b"\n"
# Upper bounds of one bundle (the publisher starts another beyond them): a writer unpacks a whole message into the
# batch in hand, so a bundle's size bounds what one prefetched message adds to a writer's memory.
MAX_BUNDLE_UPSERTS = 128
MAX_BUNDLE_BYTES = 1 << 20


class BundleError(ValueError):
    """A message claiming to be a bundle that cannot be read (it goes to the dead-letter queue whole)."""


def pack(bodies: Sequence[bytes], stamps: Sequence[float]) -> tuple[bytes, dict[str, object]]:
    """The body and headers of a bundle of ``bodies`` published at ``stamps`` (unix times, one each)."""
    if len(bodies) != len(stamps) or not bodies:
        raise ValueError("a bundle needs one stamp per body, and at least one body")
    for body in bodies:
        if SEPARATOR in body:  # the encoder (orjson, compact) never writes one; a bundle must not split wrongly
            raise ValueError("a bundled body must not contain a newline")
    stamped = [stamp_header(stamp) for stamp in stamps]
    headers = {PUBLISHED_AT_HEADER: min(stamped), BUNDLE_HEADER: len(bodies), STAMPS_HEADER: stamped}
    return SEPARATOR.join(bodies), headers


def is_bundle(headers: Mapping[str, object] | None) -> bool:
    """True when a message with these headers is a bundle (not a single upsert)."""
    return bool(headers) and BUNDLE_HEADER in headers  # type: ignore[operator]


def unpack(body: bytes, headers: Mapping[str, object]) -> list[tuple[bytes, float]]:
    """Each upsert of a bundle with its publish stamp, in order; :class:`BundleError` when it is malformed."""
    count = headers.get(BUNDLE_HEADER)
    stamps = headers.get(STAMPS_HEADER)
    if type(count) is not int or count < 1:
        raise BundleError(f"{BUNDLE_HEADER} must be a positive integer")
    if not isinstance(stamps, list | tuple) or len(stamps) != count:
        raise BundleError(f"{STAMPS_HEADER} must list {count} stamps")
    bodies = body.split(SEPARATOR)
    if len(bodies) != count:
        raise BundleError(f"{BUNDLE_HEADER} says {count} upserts, the body holds {len(bodies)}")
    return [(part, read_stamp(stamp)) for part, stamp in zip(bodies, stamps, strict=True)]
