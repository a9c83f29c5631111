"""Value checks: a raw value from YAML or the environment in, a typed value out.

Each check takes the key path (or the environment variable's name) and the
raw value, and returns the typed value or raises :class:`ConfigError` with a
one-line message about that key. A check that an environment variable may
feed says, with :func:`env_reader`, how the variable's text becomes its raw
value. Secrets are described by type, never shown.

YAML gives bools for true/false, and bool is an int subclass, so every
numeric check rejects bools explicitly. Integers are held to the signed
64-bit range: the SQLite log stores them as such and JSON tools (orjson,
what ``check-config`` prints with) cannot write anything larger.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from bezant_trio.config.errors import ConfigError, describe, suggest, type_name
from bezant_trio.config.schema import Check, FrozenMap, env_reader
from bezant_trio.config.secrets import mask_url

__all__ = [
    "CHANNELS",
    "MAX_INT",
    "bind",
    "boolean",
    "channels",
    "choice",
    "db_path",
    "field_ids",
    "gateway_url",
    "host_names",
    "is_loopback_host",
    "optional_positive_int",
    "positive_int",
    "positive_seconds",
    "retention_days",
    "seconds",
    "sink_entries",
    "split_bind",
    "token",
]

#: Account-wide channels the connector may subscribe to.
CHANNELS: Final = ("orders", "pnl", "trades", "account_summary", "ledger")
#: The largest integer a setting may hold (signed 64-bit).
MAX_INT: Final = 2**63 - 1

_FIELD_ID_RE: Final = re.compile(r"[0-9]+")
_ENV_INT_RE: Final = re.compile(r"[0-9]{1,18}")
_BIND_RE: Final = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]+)")
_EXAMPLE_URL: Final = "'https://localhost:5000/v1/api'"
_HOST_NAME_RE: Final = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


# --------------------------------------------------------------------------- environment text


def _read_env_bool(variable: str, text: str) -> object:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(variable, f"expected one of 1/0/true/false/yes/no, got {describe(text)}")


def _read_env_int(variable: str, text: str) -> object:
    digits = text.strip()
    if not _ENV_INT_RE.fullmatch(digits):
        raise ConfigError(variable, f"expected a positive integer, got {describe(text)}")
    return int(digits)


def _read_env_empty_is_null(variable: str, text: str) -> object:
    return text or None


def _read_env_token(variable: str, text: str) -> object:
    # An empty token would mean "no authentication": refuse rather than let
    # `BEZANT_API_TOKEN=` (say, from a generator that failed) override the file.
    if not text:
        raise ConfigError(
            variable,
            "is set but empty (an empty token would turn authentication off); "
            "set a token, or unset the variable to use http.token",
        )
    return text


# --------------------------------------------------------------------------- scalars


@env_reader(_read_env_bool)
def boolean(key: str, value: object) -> bool:
    """``true`` or ``false`` (the environment also takes 1/0, yes/no, on/off)."""
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected a boolean (true or false), got {describe(value)}")
    return value


def _number(key: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected {what}, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, f"expected {what}, got {describe(value)}")
    return number


def seconds(key: str, value: object) -> float:
    """A duration in seconds, ``>= 0``."""
    number = _number(key, value, "a duration in seconds >= 0")
    if number < 0:
        raise ConfigError(key, f"expected a duration in seconds >= 0, got {describe(value)}")
    return number


def positive_seconds(key: str, value: object) -> float:
    """A duration in seconds, ``> 0``."""
    number = _number(key, value, "a duration in seconds > 0")
    if number <= 0:
        raise ConfigError(key, f"expected a duration in seconds > 0, got {describe(value)}")
    return number


def retention_days(key: str, value: object) -> float:
    """A number of days, ``> 0``."""
    number = _number(key, value, "a number of days > 0")
    if number <= 0:
        raise ConfigError(key, f"expected a number of days > 0, got {describe(value)}")
    return number


def _integer(key: str, value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"expected {what}, got {describe(value)}")
    if value > MAX_INT:
        raise ConfigError(
            key, f"expected {what} no greater than {MAX_INT} (2**63 - 1), got {describe(value)}"
        )
    return value


@env_reader(_read_env_int)
def positive_int(key: str, value: object) -> int:
    """An integer from 1 to :data:`MAX_INT`."""
    return _integer(key, value, "a positive integer")


def optional_positive_int(key: str, value: object) -> int | None:
    """An integer from 1 to :data:`MAX_INT`, or ``null``."""
    if value is None:
        return None
    return _integer(key, value, "a positive integer or null")


def gateway_url(key: str, value: object) -> str:
    """An http(s) URL with a host, without a trailing slash."""
    if not isinstance(value, str):
        raise ConfigError(
            key, f"expected an http(s) URL like {_EXAMPLE_URL}, got {describe(value)}"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or any(char.isspace() for char in value)
    ):
        raise ConfigError(
            key,
            f"expected an http:// or https:// URL with a host, like {_EXAMPLE_URL}, "
            f"got {mask_url(value)!r}",
        )
    # Callers append paths ("/tickle", "/ws"); a trailing slash would double up.
    return value.rstrip("/")


def bind(key: str, value: object) -> str:
    """``host:port`` or ``[v6]:port``."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a 'host:port' string, got {describe(value)}")
    try:
        split_bind(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return value


@env_reader(_read_env_token)
def token(key: str, value: object) -> str | None:
    """A bearer token (printable, no whitespace), or ``null`` for no authentication."""
    # The value is a secret: messages describe its type, never its content.
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            key, f"expected a string or null, got {type_name(value)} (quote the token in YAML)"
        )
    if not value:
        raise ConfigError(key, "must not be empty (use null to turn authentication off)")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ConfigError(
            key, "must not contain whitespace or control characters (value not shown)"
        )
    return value


@env_reader(_read_env_empty_is_null)
def db_path(key: str, value: object) -> str | None:
    """A file path, or ``null`` (the environment's empty value) for memory only."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(
            key,
            f"expected a file path or null (null keeps events in memory only), "
            f"got {describe(value)}",
        )
    return value


def choice(*choices: str) -> Check:
    """A check for one of ``choices`` (case-insensitive; the lower-case form is kept)."""
    quoted = [repr(item) for item in choices]
    expected = " or ".join(quoted) if len(quoted) <= 2 else f"one of {', '.join(quoted)}"

    def check(key: str, value: object) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ConfigError(key, f"expected {expected}, got {describe(value)}")

    return check


# --------------------------------------------------------------------------- lists


def gateway_word(key: str, value: object) -> str:
    """A short token the gateway reads as is: letters and digits, e.g. "5min", "1d"."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{0,4}[A-Za-z_]{1,12}", value):
        return value
    raise ConfigError(key, f'expected a period like "1d", "2h" or "5min", got {describe(value)}')


def channels(key: str, value: object) -> tuple[str, ...]:
    """Distinct names drawn from :data:`CHANNELS`."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            key, f"expected a list drawn from {', '.join(CHANNELS)}, got {describe(value)}"
        )
    found: list[str] = []
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        if not isinstance(item, str) or item not in CHANNELS:
            raise ConfigError(
                entry,
                f"unknown channel {describe(item)}{suggest(item, CHANNELS)}; "
                f"expected one of {', '.join(CHANNELS)}",
            )
        if item in found:
            raise ConfigError(entry, f"duplicate channel {item!r}")
        found.append(item)
    return tuple(found)


def field_ids(key: str, value: object) -> tuple[str, ...]:
    """A non-empty list of distinct market-data field ids (strings of digits)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            key, f'expected a list of field ids like ["31", "84"], got {describe(value)}'
        )
    if not value:
        raise ConfigError(key, "must list at least one market-data field id")
    found: list[str] = []
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        if not isinstance(item, str) or not _FIELD_ID_RE.fullmatch(item):
            hint = " (quote field ids in YAML)" if isinstance(item, int) else ""
            raise ConfigError(
                entry, f'expected a string of digits like "31", got {describe(item)}{hint}'
            )
        if item in found:
            raise ConfigError(entry, f"duplicate field id {item!r}")
        found.append(item)
    return tuple(found)


def host_names(key: str, value: object) -> tuple[str, ...]:
    """Distinct host names (lower-cased), IPv6 literals in brackets, or ``*``; no ports."""
    if not isinstance(value, list | tuple):
        raise ConfigError(
            key, f'expected a list of host names like ["bezant.local"], got {describe(value)}'
        )
    found: list[str] = []
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        name = item.strip().lower() if isinstance(item, str) else None
        if name is None or not (name == "*" or _is_host_name(name)):
            raise ConfigError(
                entry,
                "expected a host name like bezant.local, an address like 192.168.1.5 or "
                f"[fd00::5], or *, without a port; got {describe(item)}",
            )
        if name in found:
            raise ConfigError(entry, f"duplicate host name {name!r}")
        found.append(name)
    return tuple(found)


def _is_host_name(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return False
        return True
    return len(name) <= 253 and _HOST_NAME_RE.fullmatch(name.rstrip(".")) is not None


def sink_entries(key: str, value: object) -> tuple[Mapping[str, Any], ...]:
    """A list (or ``null``) of mappings, each kept read-only.

    Only the shape is checked here: names, types and each type's options are
    the sink layer's to check (``bezant_trio.sinks``), with the plugin that
    knows them.
    """
    if value is None:  # `sinks:` with only commented-out entries below it
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list of sink mappings, got {describe(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(
                f"{key}[{index}]",
                f"expected a mapping with 'name' and 'type', got {describe(item)}",
            )
    return tuple(FrozenMap(item) for item in value)


# --------------------------------------------------------------------------- bind addresses


def split_bind(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; ``ValueError`` with a user-facing message."""
    match = _BIND_RE.fullmatch(address)
    shown = describe(address)
    if match is None:
        hint = (
            " (write IPv6 addresses in brackets, e.g. [::1]:8080)" if address.count(":") > 1 else ""
        )
        raise ValueError(f"cannot parse {shown}: expected host:port{hint}")
    host = match["v6"] if match["v6"] is not None else match["host"]
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"cannot parse {shown}: {host!r} in brackets is not an IPv6 address"
            ) from None
    port_text = match["port"]
    if len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"port {port_text} in {shown} is out of range (0-65535)")
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``, v4-mapped)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
