"""Text rules, retry tiers and recovery heartbeats: pure logic."""

import pytest

from chat_common.search import escape_like
from chat_common.validation import Invalid, clean_body, clean_name
from chat_common.wire.heartbeats import WriterHeartbeat, format_heartbeat, parse_heartbeat
from chat_common.wire.topology import Topology


@pytest.mark.parametrize("bad", [None, "", "  ", 3, "a\x00b", "tab\tname", "x" * 256, "\ud800"])
def test_bad_names(bad):
    with pytest.raises(Invalid):
        clean_name(bad)


INVISIBLE = [
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200b",
    "\u2060",
    "\ufeff",
]


@pytest.mark.parametrize("char", INVISIBLE)
def test_names_refuse_bidi_controls_and_zero_width_characters(char):
    with pytest.raises(Invalid, match="bidirectional-override or zero-width"):
        clean_name(f"admin{char}txt.exe")


@pytest.mark.parametrize("char", INVISIBLE)
def test_bodies_refuse_bidi_controls_and_zero_width_characters(char):
    with pytest.raises(Invalid, match="bidirectional-override or zero-width"):
        clean_body(f"pay to {char}account 1")


def test_joiners_and_implicit_direction_marks_are_kept():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # an emoji ZWJ sequence
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside a Persian word
    for text in (family, persian, "\u0645\u0631\u062d\u0628\u0627\u200f ok"):
        assert clean_body(text) == text and clean_name(text) == text


def test_text_is_kept_verbatim():
    assert clean_name("  spaced  ") == "  spaced  "
    assert clean_body("a\n\tb\r\n") == "a\n\tb\r\n"
    with pytest.raises(Invalid):
        clean_body("bell\x07")


def test_retry_tiers_grow_then_stay():
    queue = Topology("p", (1, 5, 30)).messages
    assert [queue.retry(a) for a in (1, 2, 3, 9)] == [
        "p.messages.delay.1s",
        "p.messages.delay.5s",
        "p.messages.delay.30s",
        "p.messages.delay.30s",
    ]
    assert queue.dead_letter == "p.messages.dead"


def test_heartbeat_parsing():
    assert parse_heartbeat(b"0:100.5") == WriterHeartbeat(0, 100.5)
    assert parse_heartbeat("3:100.5").unacked == 3
    assert parse_heartbeat("garbage") == WriterHeartbeat(0, 0.0)  # held nothing, infinitely old
    # The previous version's seven fields read with no deliveries; this version's eight round-trip.
    assert parse_heartbeat("0:100.5::99.0:4:2:7").deliveries == 0
    full = WriterHeartbeat(1, 100.5, 98.5, 99.0, 4, 2, 7, 12)
    assert parse_heartbeat(format_heartbeat(*full)) == full
    assert parse_heartbeat("0:100.5::99.0:4:2:7:12:13") == WriterHeartbeat(0, 0.0)  # too many fields


def test_like_escaping():
    assert escape_like("50%_off\\") == "50\\%\\_off\\\\"
