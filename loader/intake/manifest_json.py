"""Reading manifest.json strictly, with bounded time, memory and output.

Python's json module is lax where a manifest must not be: a duplicated key
silently keeps the last value, a 5,000-digit number raises ValueError, a
document nested 100,000 deep raises RecursionError, and NaN is accepted. A
partner's manifest is untrusted input, so each of these is a refusal that
says what is wrong, and the size is checked before anything is parsed.
"""

from __future__ import annotations

import json
from typing import Any

# A manifest of a contract's few files is a few kilobytes; this leaves room
# for thousands of entries while keeping a hostile one from costing gigabytes.
MAX_MANIFEST_BYTES = 1 << 20
# More digits than any row count or 64-bit number has.
MAX_INT_DIGITS = 19


class ManifestJsonError(ValueError):
    """manifest.json is not the strict JSON a manifest must be; the message says why."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ManifestJsonError(f"key {key[:80]!r} appears more than once in one object")
        seen[key] = value
    return seen


def _bounded_int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise ManifestJsonError(f"a number of {len(digits):,} digits is too large (at most {MAX_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ManifestJsonError(f"{name} is not a JSON value")


def parse_manifest_json(data: bytes) -> Any:
    """The JSON value of a manifest's bytes; raises ManifestJsonError with a readable reason."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestJsonError(f"is {len(data):,} bytes; a manifest may be at most {MAX_MANIFEST_BYTES:,} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestJsonError(f"not UTF-8: byte {exc.start} cannot be decoded") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_bounded_int,
                          parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ManifestJsonError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ManifestJsonError("not a manifest: its JSON is nested too deeply") from None
