"""The effective configuration as JSON text, whatever a YAML file put in it.

Sink options pass through the configuration untouched, so the plain form of
a config may hold anything a YAML safe loader builds: bytes (``!!binary``),
sets (``!!set``), dates, integers past 64 bits, non-string mapping keys,
strings with lone surrogates (``"\\ud800"``), lists nested hundreds deep.
:func:`json_text` writes each as the nearest JSON value instead of failing,
so ``check-config`` prints a config or one error line, never a traceback.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["json_text"]


def json_text(data: Any) -> str:
    """``data`` as indented JSON text; never raises for values YAML can hold."""
    # The standard library's encoder, not orjson: orjson stops at 255 levels
    # of nesting and a YAML file can hold more.
    return json.dumps(_json_ready(data), indent=2, ensure_ascii=False, allow_nan=False)


def _json_ready(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, Mapping):
        return {_json_key(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_ready(item) for item in value), key=repr)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.date):  # datetime.datetime too
        return value.isoformat()
    return _valid_text(repr(value))


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return _valid_text(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    ready = _json_ready(key)
    return ready if isinstance(ready, str) else json.dumps(ready)


def _integer(value: int) -> int | str:
    # JSON has no size limit (orjson does: 64 bits); Python's str() does.
    if value.bit_length() > 14_000:  # about 4,200 decimal digits
        return hex(value)
    return int(value)


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates (not encodable as UTF-8) written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
