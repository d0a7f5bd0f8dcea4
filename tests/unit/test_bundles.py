"""The bundle format (chat_common.wire.bundles): several upserts in one AMQP message, unpacked exactly."""

from __future__ import annotations

import pytest

from chat_common.wire.bundles import (
    BUNDLE_HEADER,
    STAMPS_HEADER,
    BundleError,
    is_bundle,
    pack,
    unpack,
)
from chat_common.wire.contracts import MessageUpsert
from chat_common.wire.stamps import PUBLISHED_AT_HEADER


def bodies(count: int) -> list[bytes]:
    return [MessageUpsert(1, 1, n, f"line one\nline two {n} ☃").encode() for n in range(1, count + 1)]


def test_a_bundle_unpacks_into_its_upserts_with_their_own_stamps():
    parts = bodies(3)
    body, headers = pack(parts, [100.001, 100.002, 99.5])
    assert is_bundle(headers)
    assert headers[PUBLISHED_AT_HEADER] == 99500  # the oldest: what a reader of the message's stamp must see
    assert unpack(body, headers) == [(parts[0], 100.001), (parts[1], 100.002), (parts[2], 99.5)]
    assert [MessageUpsert.decode(p).message_number for p, _ in unpack(body, headers)] == [1, 2, 3]


def test_a_single_upsert_is_not_a_bundle():
    assert not is_bundle({PUBLISHED_AT_HEADER: 1})
    assert not is_bundle(None)


@pytest.mark.parametrize(
    "change",
    [
        {BUNDLE_HEADER: 2},  # fewer than the body holds
        {BUNDLE_HEADER: 4},
        {BUNDLE_HEADER: 0},
        {BUNDLE_HEADER: "3"},
        {STAMPS_HEADER: [1, 2]},
        {STAMPS_HEADER: None},
    ],
)
def test_a_malformed_bundle_is_refused_whole(change):
    body, headers = pack(bodies(3), [1.0, 2.0, 3.0])
    with pytest.raises(BundleError):
        unpack(body, {**headers, **change})


def test_a_truncated_body_is_refused():
    body, headers = pack(bodies(3), [1.0, 2.0, 3.0])
    with pytest.raises(BundleError):
        unpack(body[: body.rindex(b"\n")], headers)


def test_pack_refuses_what_it_could_not_unpack():
    with pytest.raises(ValueError):
        pack([b'{"a":\n1}'], [1.0])
    with pytest.raises(ValueError):
        pack([b"{}"], [1.0, 2.0])
    with pytest.raises(ValueError):
        pack([], [])
