"""The product's input limits, as configured, and the deepest offset a page may start at."""

from __future__ import annotations

from dataclasses import dataclass

from chat_common.config import Settings
from chat_common.validation import clean_body, clean_name

# Rows a page may start after when paging by ``page`` (offset): MySQL and Elasticsearch read and drop every row
# before the page, so a deeper offset costs more (``page=100000&per_page=100`` read 10^7 index entries). 10,000 is
# Elasticsearch's own default window (``index.max_result_window``). Chats and messages go deeper with ``after=``.
MAX_OFFSET = 10_000


@dataclass(frozen=True)
class Limits:
    """The product's input limits, as configured (:class:`~chat_common.config.Settings` holds the defaults)."""

    max_name_chars: int = Settings.max_name_chars
    max_body_chars: int = Settings.max_body_chars
    default_page_size: int = Settings.default_page_size
    max_page_size: int = Settings.max_page_size
    max_query_chars: int = Settings.max_query_chars
    rate_limit_per_second: int = Settings.rate_limit_per_second  # default per tenant; a tenant's own overrides
    # The event log (chat_api.use_cases.events): how long events are kept (a cursor from before: 410).
    event_retention_seconds: int = Settings.event_retention_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits of a running configuration."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def name(self, value: object) -> str:
        """A valid chat or application name (:class:`~chat_api.model.Invalid` otherwise)."""
        return clean_name(value, self.max_name_chars)

    def body(self, value: object) -> str:
        """A valid message body (:class:`~chat_api.model.Invalid` otherwise)."""
        return clean_body(value, self.max_body_chars)
