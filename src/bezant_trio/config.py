"""Configuration: load and validate ``config.yaml``, apply environment overrides.

This module owns the schema of DESIGN.md §5 and turns a YAML file (or a plain
mapping) plus the environment into frozen dataclasses. Every problem becomes
one :class:`ConfigError` whose text is a single line naming the offending key
or environment variable, so the CLI can print it and exit with status 2.

It reads one file and the environment, nothing else: no network, no store, no
other part of the daemon. Sink options other than ``name`` and ``type`` pass
through untouched, because only the sink manager knows each sink type's schema.
Secret values (``http.token``, sink options that look like credentials) never
appear in an error message, a ``repr`` or a masked :meth:`Config.to_dict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import yaml

__all__ = [
    "CHANNELS",
    "DEFAULT_CONFIG_PATH",
    "MASK",
    "BackoffConfig",
    "Config",
    "ConfigError",
    "EventsConfig",
    "GatewayConfig",
    "HttpConfig",
    "MarketDataConfig",
    "StoreConfig",
    "config_from_mapping",
    "default_config",
    "load_config",
]

#: Used by :func:`load_config` when no path is given and this file exists.
DEFAULT_CONFIG_PATH: Final = "config.yaml"
#: Account-wide channels the connector may subscribe to.
CHANNELS: Final = ("orders", "pnl", "trades")
#: What a masked secret looks like in :meth:`Config.to_dict`.
MASK: Final = "***"

_SYNCHRONOUS_MODES: Final = ("normal", "full")
_WEBSOCKET_CLIENTS: Final = ("wsproto", "trio-websocket")
# Substrings (lower case) of sink option keys whose values are masked. The
# brief names the first four; the rest catch the obvious spellings of the same
# thing ("credentials" does not contain "creds").
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
_DEFAULT_CAPACITY: Final = {"orders": 1000, "pnl": 5000, "marketdata": 2000, "default": 1000}
_DEFAULT_RETENTION_DAYS: Final = {
    "orders": 90.0,
    "pnl": 90.0,
    "marketdata": 14.0,
    "gap": 365.0,
    "default": 30.0,
}
_DEFAULT_FIELDS: Final = ("31", "84", "86", "85", "88", "87")
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

_T = TypeVar("_T")


class ConfigError(Exception):
    """An unusable configuration. ``str(err)`` is one line: ``<key.path>: <message>``.

    ``key`` is a dotted key path (``events.backoff.min``, ``sinks[1].name``), an
    environment variable name (``BEZANT_BIND``) or, for problems with the file
    itself, the file's path.
    """

    key: str
    message: str

    def __init__(self, key: str, message: str) -> None:
        self.key = _one_line(key)
        self.message = _one_line(message)
        super().__init__(self.key, self.message)

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class GatewayConfig:
    """How to reach the Client Portal gateway."""

    url: str = "https://localhost:5000/v1/api"
    verify_tls: bool = False
    tickle_interval: float = 60.0
    #: "wsproto" (the fast default) or "trio-websocket" (the reference library).
    websocket_client: str = "wsproto"
    #: Take the brokerage session from a competing login (ssodh/init compete=true).
    compete: bool = False
    #: Seconds any REST call to the gateway may take.
    request_timeout: float = 10.0


@dataclass(frozen=True)
class HttpConfig:
    """Where the REST API listens and who may use it."""

    bind: str = "127.0.0.1:8080"
    # Kept out of repr so a logged config never carries the token.
    token: str | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False

    @property
    def host(self) -> str:
        """The bind host, without IPv6 brackets (``"::1"`` for ``"[::1]:8080"``)."""
        return _split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        """The bind port (0 asks the OS for a free one)."""
        return _split_bind(self.bind)[1]

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        return _is_loopback_host(self.host)


@dataclass(frozen=True)
class BackoffConfig:
    """Reconnect backoff bounds in seconds (exponential with jitter in between)."""

    min: float = 1.0
    max: float = 60.0


@dataclass(frozen=True)
class MarketDataConfig:
    """Lazily subscribed per-conid market data."""

    fields: tuple[str, ...] = _DEFAULT_FIELDS
    idle_unsubscribe: float = 300.0
    max_conids: int = 100
    resubscribe_interval: float = 540.0


@dataclass(frozen=True)
class EventsConfig:
    """Ingestion: ring sizes, connection timing, subscriptions."""

    capacity: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(dict(_DEFAULT_CAPACITY))
    )
    heartbeat_timeout: float = 90.0
    ready_timeout: float = 5.0
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    channels: tuple[str, ...] = ("orders", "pnl")
    capture_other: bool = True
    marketdata: MarketDataConfig = field(default_factory=MarketDataConfig)

    def capacity_for(self, topic: str) -> int:
        """Ring size for ``topic``: its own key, else its family (``marketdata:N``), else default."""
        return _lookup_topic(self.capacity, topic, _DEFAULT_CAPACITY["default"])


@dataclass(frozen=True)
class StoreConfig:
    """The optional SQLite event log and its retention."""

    path: str | None = None
    synchronous: str = "normal"
    prune_interval: float = 3600.0
    max_events_per_topic: int | None = None
    retention_days: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(dict(_DEFAULT_RETENTION_DAYS))
    )

    def retention_days_for(self, topic: str) -> float:
        """Days kept for ``topic``: its own key, else its family (``marketdata:N``), else default."""
        return _lookup_topic(self.retention_days, topic, _DEFAULT_RETENTION_DAYS["default"])


@dataclass(frozen=True)
class Config:
    """The whole effective configuration (file, then environment overrides)."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shutdown_grace: float = 10.0
    # Each sink is a read-only mapping with at least "name" and "type"; the rest
    # is that sink type's own options, validated by the sink manager.
    sinks: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """The effective configuration as plain dicts/lists/scalars (YAML/JSON ready).

        With ``mask_secrets`` (the default) ``http.token`` and every sink option
        whose key looks like a credential are replaced by ``"***"``; ``None``
        stays ``None`` so "unset" is still visible.
        """
        data: dict[str, Any] = _plain(self)
        if mask_secrets:
            if data["http"]["token"] is not None:
                data["http"]["token"] = MASK
            data["sinks"] = [_mask_secrets(sink) for sink in data["sinks"]]
        return data

    def __repr__(self) -> str:
        # Sink options may hold webhook secrets; never let a log line carry them.
        sinks = tuple(_mask_secrets(_plain(sink)) for sink in self.sinks)
        return (
            f"Config(gateway={self.gateway!r}, http={self.http!r}, events={self.events!r}, "
            f"store={self.store!r}, shutdown_grace={self.shutdown_grace!r}, sinks={sinks!r})"
        )


def default_config() -> Config:
    """The built-in defaults (no file, no environment)."""
    return Config()


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Config:
    """Load ``path`` (YAML), apply environment overrides and validate everything.

    ``path=None`` means ``./config.yaml`` if it exists, else the built-in
    defaults; an explicit path that does not exist is an error. An empty file
    means the defaults. ``env=None`` means ``os.environ``.
    Raises :class:`ConfigError` for any problem.
    """
    if env is None:
        env = os.environ
    if path is None:
        if not Path(DEFAULT_CONFIG_PATH).is_file():
            return config_from_mapping({}, env=env, source="<defaults>")
        path = DEFAULT_CONFIG_PATH
    source = os.fsdecode(path)
    data = _parse_yaml(_read_file(source), source)
    return config_from_mapping(data, env=env, source=source)


def config_from_mapping(
    data: Mapping[str, Any] | None,
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<dict>",
) -> Config:
    """Validate an already parsed document (the shape of ``config.yaml``).

    Unlike :func:`load_config`, ``env=None`` applies *no* environment
    overrides, so tests and the demo get exactly what they passed; pass
    ``env=os.environ`` to opt in. ``source`` names the document in errors
    about its top level. Raises :class:`ConfigError` for any problem.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            source,
            "expected a mapping of sections (gateway, http, events, store, ...) "
            f"at the top level, got {_describe(data)}",
        )
    top = _section("", data, _TOP_KEYS)
    config = Config(
        gateway=_parse_gateway(top.get("gateway")),
        http=_parse_http(top.get("http")),
        events=_parse_events(top.get("events")),
        store=_parse_store(top.get("store")),
        shutdown_grace=_get(top, "", "shutdown_grace", 10.0, _seconds),
        sinks=_parse_sinks("sinks", top.get("sinks")),
    )
    config = _apply_env(config, env or {})
    _check_exposure(config.http)
    return config


# --------------------------------------------------------------------------- sections

_TOP_KEYS: Final = ("gateway", "http", "events", "store", "shutdown_grace", "sinks")
_GATEWAY_KEYS: Final = (
    "url",
    "verify_tls",
    "tickle_interval",
    "websocket_client",
    "compete",
    "request_timeout",
)
_HTTP_KEYS: Final = ("bind", "token", "allow_unauthenticated")
_EVENTS_KEYS: Final = (
    "capacity",
    "heartbeat_timeout",
    "ready_timeout",
    "backoff",
    "channels",
    "capture_other",
    "marketdata",
)
_BACKOFF_KEYS: Final = ("min", "max")
_MARKETDATA_KEYS: Final = ("fields", "idle_unsubscribe", "max_conids", "resubscribe_interval")
_STORE_KEYS: Final = (
    "path",
    "synchronous",
    "prune_interval",
    "max_events_per_topic",
    "retention_days",
)


def _parse_gateway(raw: object) -> GatewayConfig:
    section = _section("gateway", raw, _GATEWAY_KEYS)
    d = GatewayConfig()
    return GatewayConfig(
        url=_get(section, "gateway", "url", d.url, _gateway_url),
        verify_tls=_get(section, "gateway", "verify_tls", d.verify_tls, _boolean),
        tickle_interval=_get(
            section, "gateway", "tickle_interval", d.tickle_interval, _positive_seconds
        ),
        websocket_client=_get(
            section, "gateway", "websocket_client", d.websocket_client, _websocket_client
        ),
        compete=_get(section, "gateway", "compete", d.compete, _boolean),
        request_timeout=_get(
            section, "gateway", "request_timeout", d.request_timeout, _positive_seconds
        ),
    )


def _parse_http(raw: object) -> HttpConfig:
    section = _section("http", raw, _HTTP_KEYS)
    d = HttpConfig()
    return HttpConfig(
        bind=_get(section, "http", "bind", d.bind, _bind),
        token=_get(section, "http", "token", d.token, _token),
        allow_unauthenticated=_get(
            section, "http", "allow_unauthenticated", d.allow_unauthenticated, _boolean
        ),
    )


def _parse_events(raw: object) -> EventsConfig:
    section = _section("events", raw, _EVENTS_KEYS)
    d = EventsConfig()
    return EventsConfig(
        capacity=_topic_table(
            "events.capacity", section.get("capacity"), _DEFAULT_CAPACITY, _positive_int
        ),
        heartbeat_timeout=_get(
            section, "events", "heartbeat_timeout", d.heartbeat_timeout, _positive_seconds
        ),
        ready_timeout=_get(section, "events", "ready_timeout", d.ready_timeout, _positive_seconds),
        backoff=_parse_backoff(section.get("backoff")),
        channels=_get(section, "events", "channels", d.channels, _channels),
        capture_other=_get(section, "events", "capture_other", d.capture_other, _boolean),
        marketdata=_parse_marketdata(section.get("marketdata")),
    )


def _parse_backoff(raw: object) -> BackoffConfig:
    path = "events.backoff"
    section = _section(path, raw, _BACKOFF_KEYS)
    d = BackoffConfig()
    low = _get(section, path, "min", d.min, _positive_seconds)
    high = _get(section, path, "max", d.max, _seconds)
    if low > high:
        # Name whichever key the user actually wrote, so the error points at it.
        key = f"{path}.max" if "max" in section else f"{path}.min"
        raise ConfigError(key, f"backoff min ({low:g}) must not be greater than max ({high:g})")
    return BackoffConfig(min=low, max=high)


def _parse_marketdata(raw: object) -> MarketDataConfig:
    path = "events.marketdata"
    section = _section(path, raw, _MARKETDATA_KEYS)
    d = MarketDataConfig()
    return MarketDataConfig(
        fields=_get(section, path, "fields", d.fields, _field_ids),
        idle_unsubscribe=_get(section, path, "idle_unsubscribe", d.idle_unsubscribe, _seconds),
        max_conids=_get(section, path, "max_conids", d.max_conids, _positive_int),
        resubscribe_interval=_get(
            section, path, "resubscribe_interval", d.resubscribe_interval, _seconds
        ),
    )


def _parse_store(raw: object) -> StoreConfig:
    section = _section("store", raw, _STORE_KEYS)
    d = StoreConfig()
    return StoreConfig(
        path=_get(section, "store", "path", d.path, _db_path),
        synchronous=_get(section, "store", "synchronous", d.synchronous, _synchronous),
        prune_interval=_get(
            section, "store", "prune_interval", d.prune_interval, _positive_seconds
        ),
        max_events_per_topic=_get(
            section, "store", "max_events_per_topic", d.max_events_per_topic, _optional_positive_int
        ),
        retention_days=_topic_table(
            "store.retention_days",
            section.get("retention_days"),
            _DEFAULT_RETENTION_DAYS,
            _retention_days,
        ),
    )


def _parse_sinks(key: str, value: object) -> tuple[Mapping[str, Any], ...]:
    if value is None:  # `sinks:` with only commented-out entries below it
        return ()
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"expected a list of sink mappings, got {_describe(value)}")
    sinks: list[Mapping[str, Any]] = []
    first_use: dict[str, int] = {}
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(
                entry, f"expected a mapping with 'name' and 'type', got {_describe(item)}"
            )
        if "name" not in item:
            raise ConfigError(f"{entry}.name", "missing: every sink needs a unique name")
        name = item["name"]
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{entry}.name", f"expected a non-empty string, got {_describe(name)}"
            )
        if name in first_use:
            raise ConfigError(
                f"{entry}.name",
                f"duplicate sink name {name!r} (also used by {key}[{first_use[name]}]); "
                "sink names must be unique",
            )
        first_use[name] = index
        if "type" not in item:
            raise ConfigError(
                f"{entry}.type", "missing: set the sink type, e.g. 'file', 'webhook' or 'test'"
            )
        sink_type = item["type"]
        if not isinstance(sink_type, str) or not sink_type.strip():
            raise ConfigError(
                f"{entry}.type", f"expected a non-empty string, got {_describe(sink_type)}"
            )
        sinks.append(MappingProxyType(dict(item)))
    return tuple(sinks)


# --------------------------------------------------------------------------- environment


def _apply_env(config: Config, env: Mapping[str, str]) -> Config:
    """Apply the bezant-server environment variables on top of the file's values."""
    gateway, http, events, store = config.gateway, config.http, config.events, config.store

    if (text := env.get("IBKR_GATEWAY_URL")) is not None:
        gateway = replace(gateway, url=_gateway_url("IBKR_GATEWAY_URL", text))
    if (text := env.get("BEZANT_VERIFY_TLS")) is not None:
        gateway = replace(gateway, verify_tls=_env_bool("BEZANT_VERIFY_TLS", text))
    if (text := env.get("BEZANT_BIND")) is not None:
        http = replace(http, bind=_bind("BEZANT_BIND", text))
    if (text := env.get("BEZANT_API_TOKEN")) is not None:
        http = replace(http, token=_token("BEZANT_API_TOKEN", text or None))
    if (text := env.get("BEZANT_EVENTS_DB_PATH")) is not None:
        store = replace(store, path=_db_path("BEZANT_EVENTS_DB_PATH", text or None))

    capacity = dict(events.capacity)
    for variable, topic in (
        ("BEZANT_EVENTS_ORDERS_CAP", "orders"),
        ("BEZANT_EVENTS_PNL_CAP", "pnl"),
        ("BEZANT_EVENTS_MARKETDATA_CAP", "marketdata"),
    ):
        if (text := env.get(variable)) is not None:
            capacity[topic] = _positive_int(variable, _env_int(variable, text))
    if capacity != events.capacity:
        events = replace(events, capacity=MappingProxyType(capacity))

    return replace(config, gateway=gateway, http=http, events=events, store=store)


def _env_bool(key: str, text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected one of 1/0/true/false/yes/no, got {_describe(text)}")


def _env_int(key: str, text: str) -> int:
    digits = text.strip()
    if not re.fullmatch(r"[0-9]{1,18}", digits):
        raise ConfigError(key, f"expected a positive integer, got {_describe(text)}")
    return int(digits)


def _check_exposure(http: HttpConfig) -> None:
    """Refuse an unauthenticated API reachable from other machines."""
    if http.is_loopback or http.token is not None or http.allow_unauthenticated:
        return
    raise ConfigError(
        "http.bind",
        f"refusing to listen on {http.bind} without http.token "
        "(set BEZANT_API_TOKEN or http.allow_unauthenticated: true)",
    )


# --------------------------------------------------------------------------- value checks
#
# Each check takes the key path (or env variable) and the raw value, and returns
# the typed value or raises ConfigError. YAML gives us bools for true/false, and
# bool is an int subclass, so every numeric check rejects bools explicitly.


def _boolean(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected a boolean (true or false), got {_describe(value)}")
    return value


def _number(key: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected {what}, got {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(key, f"expected {what}, got {_describe(value)}")
    return number


def _seconds(key: str, value: object) -> float:
    number = _number(key, value, "a duration in seconds >= 0")
    if number < 0:
        raise ConfigError(key, f"expected a duration in seconds >= 0, got {_describe(value)}")
    return number


def _positive_seconds(key: str, value: object) -> float:
    number = _number(key, value, "a duration in seconds > 0")
    if number <= 0:
        raise ConfigError(key, f"expected a duration in seconds > 0, got {_describe(value)}")
    return number


def _retention_days(key: str, value: object) -> float:
    number = _number(key, value, "a number of days > 0")
    if number <= 0:
        raise ConfigError(key, f"expected a number of days > 0, got {_describe(value)}")
    return number


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"expected a positive integer, got {_describe(value)}")
    return value


def _optional_positive_int(key: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"expected a positive integer or null, got {_describe(value)}")
    return value


def _gateway_url(key: str, value: object) -> str:
    example = "'https://localhost:5000/v1/api'"
    if not isinstance(value, str):
        raise ConfigError(key, f"expected an http(s) URL like {example}, got {_describe(value)}")
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
            key, f"expected an http:// or https:// URL with a host, like {example}, got {value!r}"
        )
    # Callers append paths ("/tickle", "/ws"); a trailing slash would double up.
    return value.rstrip("/")


def _bind(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a 'host:port' string, got {_describe(value)}")
    try:
        _split_bind(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    return value


def _token(key: str, value: object) -> str | None:
    # The value is a secret: messages describe its type, never its content.
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            key, f"expected a string or null, got {_type_name(value)} (quote the token in YAML)"
        )
    if not value:
        raise ConfigError(key, "must not be empty (use null to turn authentication off)")
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ConfigError(
            key, "must not contain whitespace or control characters (value not shown)"
        )
    return value


def _db_path(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(
            key,
            f"expected a file path or null (null keeps events in memory only), "
            f"got {_describe(value)}",
        )
    return value


def _synchronous(key: str, value: object) -> str:
    if isinstance(value, str) and value.lower() in _SYNCHRONOUS_MODES:
        return value.lower()
    raise ConfigError(key, f"expected 'normal' or 'full', got {_describe(value)}")


def _websocket_client(key: str, value: object) -> str:
    if isinstance(value, str) and value.lower() in _WEBSOCKET_CLIENTS:
        return value.lower()
    raise ConfigError(key, f"expected 'wsproto' or 'trio-websocket', got {_describe(value)}")


def _channels(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(
            key, f"expected a list drawn from {', '.join(CHANNELS)}, got {_describe(value)}"
        )
    channels: list[str] = []
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        if not isinstance(item, str) or item not in CHANNELS:
            raise ConfigError(
                entry,
                f"unknown channel {_describe(item)}{_suggest(item, CHANNELS)}; "
                f"expected one of {', '.join(CHANNELS)}",
            )
        if item in channels:
            raise ConfigError(entry, f"duplicate channel {item!r}")
        channels.append(item)
    return tuple(channels)


def _field_ids(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(
            key, f'expected a list of field ids like ["31", "84"], got {_describe(value)}'
        )
    if not value:
        raise ConfigError(key, "must list at least one market-data field id")
    fields: list[str] = []
    for index, item in enumerate(value):
        entry = f"{key}[{index}]"
        if not isinstance(item, str) or not re.fullmatch(r"[0-9]+", item):
            hint = " (quote field ids in YAML)" if isinstance(item, int) else ""
            raise ConfigError(
                entry, f'expected a string of digits like "31", got {_describe(item)}{hint}'
            )
        if item in fields:
            raise ConfigError(entry, f"duplicate field id {item!r}")
        fields.append(item)
    return tuple(fields)


def _topic_table(
    key: str,
    value: object,
    defaults: Mapping[str, _T],
    check: Callable[[str, object], _T],
) -> Mapping[str, _T]:
    """A per-topic table: keys are topic names, merged over the defaults."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            key,
            f"expected a mapping of topic name to value (e.g. orders, marketdata, default), "
            f"got {_describe(value)}",
        )
    table = dict(defaults)
    for topic, item in value.items():
        entry = _join(key, topic)
        if not isinstance(topic, str) or not topic or any(c.isspace() for c in topic):
            raise ConfigError(
                entry, "topic names must be non-empty strings without whitespace (quote it in YAML)"
            )
        table[topic] = check(entry, item)
    return MappingProxyType(table)


# --------------------------------------------------------------------------- helpers


def _section(path: str, value: object, allowed: Sequence[str]) -> Mapping[Any, Any]:
    """Check that ``value`` is a mapping with only ``allowed`` keys; ``None`` is empty."""
    if value is None:  # a section header with everything below commented out
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"expected a mapping with keys {', '.join(allowed)}, got {_describe(value)}"
        )
    for key in value:
        if not isinstance(key, str) or key not in allowed:
            hint = _suggest(key, allowed)
            if isinstance(key, bool):
                hint = " (YAML reads unquoted yes/no/on/off keys as booleans; quote the key)"
            elif not hint:
                hint = f" (expected one of: {', '.join(allowed)})"
            raise ConfigError(_join(path, key), f"unknown key{hint}")
    return value


def _get(
    section: Mapping[Any, Any],
    path: str,
    name: str,
    default: _T,
    check: Callable[[str, object], _T],
) -> _T:
    if name in section:
        return check(_join(path, name), section[name])
    return default


def _suggest(word: object, choices: Sequence[str]) -> str:
    if not isinstance(word, str):
        return ""
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_:.\-]+", key):
        segment = key
    elif isinstance(key, str):
        segment = repr(key)  # makes empty, spaced or multi-line keys visible
    else:
        segment = _describe(key)
    return f"{path}.{segment}" if path else segment


def _describe(value: object) -> str:
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
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    return _type_name(value)


def _type_name(value: object) -> str:
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


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _split_bind(bind: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; ``ValueError`` with a user-facing message."""
    match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>[0-9]+)", bind)
    if match is None:
        hint = " (write IPv6 addresses in brackets, e.g. [::1]:8080)" if bind.count(":") > 1 else ""
        raise ValueError(f"cannot parse {bind!r}: expected host:port{hint}")
    host = match["v6"] if match["v6"] is not None else match["host"]
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"cannot parse {bind!r}: {host!r} in brackets is not an IPv6 address"
            ) from None
    port_text = match["port"]
    if len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"port {port_text} in {bind!r} is out of range (0-65535)")
    return host, int(port_text)


def _is_loopback_host(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _lookup_topic(table: Mapping[str, _T], topic: str, fallback: _T) -> _T:
    # ``fallback`` only matters for a table built by hand without "default";
    # loaded configs always carry it.
    if topic in table:
        return table[topic]
    family, sep, _ = topic.partition(":")
    if sep and family in table:
        return table[family]
    return table.get("default", fallback)


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and sequences to plain dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _is_secret_key(key: object) -> bool:
    lowered = str(key).lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


def _mask_secrets(value: Any) -> Any:
    """Mask values under credential-like keys, at any depth of a sink's options."""
    if isinstance(value, Mapping):
        return {
            key: (MASK if item is not None else None)
            if _is_secret_key(key)
            else _mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_secrets(item) for item in value]
    return value


# --------------------------------------------------------------------------- YAML


class _DuplicateKeyError(yaml.composer.ComposerError):
    """PyYAML silently keeps the last of two equal keys; we refuse instead."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same tags, same safety) that rejects duplicate keys."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        # Checked on the composed node, before merge keys (<<) are flattened into
        # it, so a merged default overridden by an explicit key is not a duplicate.
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key_node, _value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            identity = (key_node.tag, key_node.value)
            if identity in seen:
                raise _DuplicateKeyError(
                    None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                )
            seen.add(identity)
        return node


def _read_file(source: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            source,
            "file not found (check the --config path, or omit it to use ./config.yaml "
            "or the built-in defaults)",
        ) from None
    except IsADirectoryError:
        raise ConfigError(source, "is a directory, expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc.strerror or exc}") from None


def _parse_yaml(raw: bytes | str, source: str) -> Any:
    try:
        return yaml.load(raw, Loader=_StrictLoader)
    except _DuplicateKeyError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            source, f"{exc.problem}{where} (YAML would silently keep only the last one)"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if exc.problem and exc.context and not exc.context.startswith("while"):
            # e.g. "expected a single document in the stream, but found another document"
            detail = f"{exc.context}, {exc.problem}"
        elif exc.problem and exc.context:
            detail = f"{exc.problem} ({exc.context})"
        else:
            detail = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(source, f"YAML syntax error{where}: {detail}") from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: bad encoding, control characters
        raise ConfigError(source, f"YAML error: {exc}") from None
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit limit
        raise ConfigError(source, f"cannot read YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(source, "cannot read YAML: nested too deeply") from None
