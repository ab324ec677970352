"""Hooks for the schemathesis run of ``test_openapi_fuzz.py`` (loaded through SCHEMATHESIS_HOOKS).

An Idempotency-Key names one request: the same key with another body is refused (422), by
design, and no schema can say so. Schemathesis reuses short keys (``!``, ``0``) across cases, so
each valid key it sends gets a unique suffix (still 1-255 visible ASCII characters); keys that
break the pattern are sent as generated, to be refused.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

from gateway.http import IDEMPOTENCY_KEY_PATTERN

_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:  # noqa: ARG001 - the hook's signature
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str) and _KEY.match(headers[name]):
            headers[name] = headers[name][: 255 - 32] + uuid.uuid4().hex
