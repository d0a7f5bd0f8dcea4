"""When a failed delivery is tried again, and what a receiver's ``Retry-After`` asks for.

The default schedule is Svix's: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the failures before — a bit more than
a day and 8 attempts in all; then the event is given up. ``WEBHOOK_RETRY_SCHEDULE`` (comma-separated seconds) sets
another (tests use short ones). A ``Retry-After`` (on 429 and 503) may only push the next attempt later, never
earlier, and never beyond :data:`MAX_RETRY_AFTER_SECONDS` (a receiver cannot park an event for a week).
"""

from __future__ import annotations

import datetime
from email.utils import parsedate_to_datetime

DEFAULT_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_RETRY_AFTER_SECONDS = 36000.0  # the schedule's longest step


def parse_schedule(text: str | None) -> tuple[float, ...]:
    """The schedule in ``text`` (comma-separated positive seconds), or the default for None or blank."""
    if text is None or not text.strip():
        return DEFAULT_SCHEDULE
    steps = tuple(float(part) for part in text.split(",") if part.strip())
    if not steps or any(step <= 0 for step in steps):
        raise ValueError("WEBHOOK_RETRY_SCHEDULE is comma-separated positive seconds")
    return steps


def retry_delay(schedule: tuple[float, ...], failures: int) -> float | None:
    """Seconds until the next attempt after ``failures`` failed ones (1: the first attempt failed); None: give up."""
    if failures < 1:
        return 0.0
    return schedule[failures - 1] if failures <= len(schedule) else None


def retry_after_seconds(
    value: str | None, now: datetime.datetime, cap: float = MAX_RETRY_AFTER_SECONDS
) -> float | None:
    """A ``Retry-After`` header as seconds from ``now`` (delta-seconds or an HTTP date), capped; None if absent or
    unreadable (then the schedule alone decides)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), cap)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return min(max(0.0, (when - now).total_seconds()), cap)
