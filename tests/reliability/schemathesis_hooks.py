"""Schemathesis hooks of the fuzzing run (loaded by file path from the run's config, not collected by pytest)."""

from __future__ import annotations

import schemathesis

FORM = "application/x-www-form-urlencoded"


@schemathesis.hook
def filter_case(context, case) -> bool:
    """Skip form bodies with a list value: it goes out as a repeated key, and the API takes the last one.

    That is the documented Rails behaviour (see media.FormHandler), which JSON Schema cannot describe, so such
    a case would be reported as "invalid data accepted" whenever the last copy is valid. The hostile-input
    suite checks repeated keys explicitly.
    """
    body = case.body
    if case.media_type == FORM and isinstance(body, dict):
        return not any(isinstance(value, list) for value in body.values())
    return True
