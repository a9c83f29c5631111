"""What counts as a secret in a configuration, how it is masked, how it is found.

One set of rules serves three readers: :meth:`Config.to_dict` with
``mask_secrets`` (what ``check-config`` prints), every :class:`ConfigError`
message, and :func:`config_secrets` (the values the log redactor hides).
The rules:

- values marked secret in the schema (``http.token``);
- the userinfo (``user:password@``) and the query-string values of any URL:
  ``gateway.url`` and every URL-shaped string among a sink's options;
- in sink options, at any depth, values under a credential-like key
  (``secret``, ``token``, ``password``, ...) and every value under ``headers``
  whatever the header is called (``X-Api-Key``, ``Cookie``, anything).

Pure functions over plain data: no I/O, and nothing else of the package is
imported here, so the error type may use them too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

if TYPE_CHECKING:
    from bezant_trio.config.sections import Config

__all__ = [
    "MASK",
    "config_secrets",
    "mask_secret",
    "mask_sinks",
    "mask_url",
    "mask_urls_in_text",
    "url_secrets",
]

#: What a masked secret looks like in :meth:`Config.to_dict` and in messages.
MASK: Final = "***"

# Substrings (lower case) of sink option keys whose values are masked: the
# usual names and the obvious spellings of the same thing ("credentials" does
# not contain "creds").
_SECRET_KEY_WORDS: Final = (
    "secret",
    "token",
    "password",
    "creds",
    "credential",
    "passwd",
    "authorization",
    "api_key",
    "apikey",
)
# Every value under this key is a header value; any of them may be a credential.
_HEADERS_KEY: Final = "headers"
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# A URL inside free text ends at whitespace or a quote (messages quote values).
_URL_IN_TEXT_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]*")


def mask_secret(value: Any) -> Any:
    """A wholly secret value: ``"***"``, or ``None`` kept so "unset" stays visible."""
    return None if value is None else MASK


def mask_url(value: Any) -> Any:
    """``value`` with a URL's userinfo and query-string values replaced by ``"***"``.

    ``https://user:pw@gw/api?token=abc&x=1`` becomes
    ``https://***@gw/api?token=***&x=***``. Anything that is not a string
    with ``scheme://`` in it comes back unchanged; masking twice changes nothing.
    """
    if not isinstance(value, str):
        return value
    spans = _secret_spans(value)
    for start, end in reversed(spans):
        value = value[:start] + MASK + value[end:]
    return value


def url_secrets(value: str) -> list[str]:
    """The parts of a URL that :func:`mask_url` hides, as written and percent-decoded."""
    found: list[str] = []
    spans = _secret_spans(value)
    for index, (start, end) in enumerate(spans):
        part = value[start:end]
        found.append(part)
        is_userinfo = index == 0 and value[end : end + 1] == "@"
        if is_userinfo and ":" in part:
            found.extend(part.split(":", 1))
    found.extend(unquote(part) for part in list(found))
    return list(dict.fromkeys(part for part in found if part and part != MASK))


def mask_urls_in_text(text: str) -> str:
    """Every URL in a line of text masked as :func:`mask_url` does."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT_RE.sub(lambda match: mask_url(match.group()), text)


def mask_sinks(sinks: Any) -> Any:
    """The plain ``sinks`` list with every sink's secret options masked."""
    if not isinstance(sinks, list | tuple):
        return sinks
    return [_mask_options(sink) for sink in sinks]


def config_secrets(config: Config) -> list[str]:
    """Every secret value of ``config``: what a log line must never show.

    Found as the values :meth:`Config.to_dict` masks, so it stays in step
    with what ``check-config`` hides; for a URL, its hidden parts rather than
    the whole URL, so a log line keeps the host it names.
    """
    found: list[str] = []
    _collect_masked(config.to_dict(mask_secrets=False), config.to_dict(mask_secrets=True), found)
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- internals


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the userinfo (first, when present) and of each query value.

    Deliberately generous for text that is not a well-formed URL: the userinfo
    runs to the last ``@`` before the query or fragment, so a password holding
    a raw ``/`` or a space is still covered.
    """
    scheme = _SCHEME_RE.search(url)
    if scheme is None:
        return []
    start = scheme.end()
    ends = [index for index in (url.find("?", start), url.find("#", start)) if index != -1]
    authority_end = min(ends, default=len(url))
    spans: list[tuple[int, int]] = []
    at = url.rfind("@", start, authority_end)
    if at > start:
        spans.append((start, at))
    query = url.find("?", start)
    if query != -1:
        fragment = url.find("#", query)
        query_end = len(url) if fragment == -1 else fragment
        position = query + 1
        for part in url[query + 1 : query_end].split("&"):
            name, equals, item = part.partition("=")
            if equals and item:
                value_start = position + len(name) + 1
                spans.append((value_start, value_start + len(item)))
            elif not equals and part:
                spans.append((position, position + len(part)))
            position += len(part) + 1
    return spans


def _is_secret_key(key: object) -> bool:
    lowered = str(key).lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


def _mask_options(value: Any) -> Any:
    """A sink's options with secrets masked, at any depth."""
    if isinstance(value, Mapping):
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            if _is_secret_key(key):
                masked[key] = mask_secret(item)
            elif str(key).lower() == _HEADERS_KEY:
                masked[key] = _mask_every_value(item)
            else:
                masked[key] = _mask_options(item)
        return masked
    if isinstance(value, list | tuple):
        return [_mask_options(item) for item in value]
    return mask_url(value)


def _mask_every_value(value: Any) -> Any:
    """Header names stay readable; every value below them is masked."""
    if isinstance(value, Mapping):
        return {key: _mask_every_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_every_value(item) for item in value]
    return mask_secret(value)


def _collect_masked(plain: Any, masked: Any, found: list[str]) -> None:
    if isinstance(plain, dict) and isinstance(masked, dict):
        for key, value in plain.items():
            _collect_masked(value, masked.get(key), found)
    elif isinstance(plain, list) and isinstance(masked, list):
        for value, hidden in zip(plain, masked, strict=False):
            _collect_masked(value, hidden, found)
    elif masked == MASK and plain != MASK:
        # A whole value masked: a string, a number, or a mapping under a
        # credential-like key (every scalar inside it is then a secret).
        found.extend(_scalars(plain))
    elif isinstance(plain, str) and masked != plain:
        found.extend(url_secrets(plain))


def _scalars(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _scalars(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _scalars(item)]
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, str):
        return [value]
    try:
        return [str(value)]
    except ValueError:  # an integer past Python's 4300-digit str() limit
        return []
