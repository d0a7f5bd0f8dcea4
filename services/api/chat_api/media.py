"""Request/response media handlers: fast JSON (orjson) and strict Rails-style form bodies.

Both refuse invalid UTF-8 with 400 instead of guessing, so text is always stored exactly as sent.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import falcon
import falcon.media
import orjson


class JSONHandler(falcon.media.BaseHandler):
    """JSON via orjson: strict UTF-8, rejects lone surrogates, bounded nesting."""

    def deserialize(self, stream, content_type, content_length):  # noqa: D102
        return self._parse(stream.read())

    async def deserialize_async(self, stream, content_type, content_length):  # noqa: D102
        return self._parse(await stream.read())

    @staticmethod
    def _parse(data: bytes) -> object:
        if not data:
            raise falcon.MediaNotFoundError("JSON")
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise falcon.MediaMalformedError("JSON") from exc

    def serialize(self, media, content_type) -> bytes:  # noqa: D102
        return orjson.dumps(media)


class FormHandler(falcon.media.BaseHandler):
    """``application/x-www-form-urlencoded`` bodies into a flat dict (nesting is resolved by the resources)."""

    def deserialize(self, stream, content_type, content_length):  # noqa: D102
        return self._parse(stream.read())

    async def deserialize_async(self, stream, content_type, content_length):  # noqa: D102
        return self._parse(await stream.read())

    @staticmethod
    def _parse(data: bytes) -> dict:
        try:
            text = data.decode("ascii")
            pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise falcon.MediaMalformedError("form") from exc
        return dict(pairs)  # a repeated key keeps its last value, as Rails does


def media_handlers() -> falcon.media.Handlers:
    """The handlers registered on both requests and responses."""
    return falcon.media.Handlers(
        {
            falcon.MEDIA_JSON: JSONHandler(),
            falcon.MEDIA_URLENCODED: FormHandler(),
        }
    )
