"""The configuration error, and how keys, values and hints are written into it.

A :class:`ConfigError` is one line, ``<key.path>: <message>``, that the CLI
prints before exiting with status 2. The helpers here render what goes into
that line: a key path (``events.backoff.min``, ``sinks[1]``), a short value
(never a secret: URLs are masked before they are shortened), a type name for
values that must not be shown at all, and a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Final

from bezant_trio.config.secrets import mask_url, mask_urls_in_text
from bezant_trio.errors import StartupError

__all__ = ["ConfigError", "describe", "join_key", "suggest", "type_name"]

_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z0-9_:.\-]+")


class ConfigError(StartupError):
    """An unusable configuration. ``str(err)`` is one line: ``<key.path>: <message>``.

    ``key`` is a dotted key path (``events.backoff.min``, ``sinks[1]``), an
    environment variable name (``BEZANT_BIND``) or, for problems with the file
    itself, the file's path. Any URL in either has its userinfo and query
    values masked, whoever raised the error.
    """

    key: str
    message: str

    def __init__(self, key: str, message: str) -> None:
        self.key = mask_urls_in_text(_one_line(key))
        self.message = mask_urls_in_text(_one_line(message))
        super().__init__(self.key, self.message)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def join_key(path: str, key: object) -> str:
    """``path.key``; a key that is not a plain word is quoted so it stays visible."""
    if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key):
        segment = key
    elif isinstance(key, str):
        segment = repr(key)  # makes empty, spaced or multi-line keys visible
    else:
        segment = describe(key)
    return f"{path}.{segment}" if path else segment


def describe(value: object) -> str:
    """A short, one-line rendering of a value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # repr() of a huge int is slow, then raises past 4300 digits.
        return repr(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # Masked before shortening: a cut could leave half a password behind.
        text = repr(mask_url(value))
        return text if len(text) <= 60 else text[:56] + "...'"
    return type_name(value)


def type_name(value: object) -> str:
    """``"a string"``, ``"a mapping"``...: for values (secrets) that must not be shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def suggest(word: object, choices: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss (case or spelling), else ``""``."""
    if not isinstance(word, str):
        return ""
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
