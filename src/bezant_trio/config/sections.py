"""The configuration schema: one frozen dataclass per section of ``config.yaml``.

Every key is declared once, here, as a field that carries its default, its
check, and its environment variable or mask where it has one (see
``schema.py``). The parser, the unknown-key errors, the environment
overrides and the masked rendering all read these declarations; the
shipped ``config.yaml`` documents each key (a test holds the two in step).
This module holds data and the few rules that span several keys, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from bezant_trio.config import checks
from bezant_trio.config.errors import ConfigError, join_key
from bezant_trio.config.render import json_text
from bezant_trio.config.schema import Section, setting, to_plain, topic_table
from bezant_trio.config.secrets import mask_secret, mask_sinks, mask_url
from bezant_trio.model import topic_family

__all__ = [
    "BackoffConfig",
    "BarsConfig",
    "Config",
    "EventsConfig",
    "GatewayConfig",
    "HttpConfig",
    "MarketDataConfig",
    "StoreConfig",
]

_T = TypeVar("_T")

_CAPACITY: Final = {"orders": 1000, "pnl": 5000, "marketdata": 2000, "default": 1000}
_RETENTION_DAYS: Final = {
    "orders": 90.0,
    "pnl": 90.0,
    "marketdata": 14.0,
    "gap": 365.0,
    "default": 30.0,
}


@dataclass(frozen=True, repr=False)
class GatewayConfig(Section):
    """How to reach the Client Portal gateway."""

    url: str = setting(
        "https://localhost:5000/v1/api", checks.gateway_url, env="IBKR_GATEWAY_URL", mask=mask_url
    )
    verify_tls: bool = setting(False, checks.boolean, env="BEZANT_VERIFY_TLS")
    tickle_interval: float = setting(60.0, checks.positive_seconds)
    #: "wsproto" (the fast default) or "trio-websocket" (the reference library).
    websocket_client: str = setting("wsproto", checks.choice("wsproto", "trio-websocket"))
    #: Take the brokerage session from a competing login (ssodh/init compete=true).
    compete: bool = setting(False, checks.boolean)
    #: Seconds any REST call to the gateway may take.
    request_timeout: float = setting(10.0, checks.positive_seconds)


@dataclass(frozen=True, repr=False)
class HttpConfig(Section):
    """Where the REST API listens and who may use it."""

    bind: str = setting("127.0.0.1:8080", checks.bind, env="BEZANT_BIND")
    # Out of repr altogether, as a dataclass field with repr=False would be.
    token: str | None = setting(
        None, checks.token, env="BEZANT_API_TOKEN", mask=mask_secret, repr=False
    )
    allow_unauthenticated: bool = setting(False, checks.boolean)
    #: Without a token, Host names answered beside localhost, 127.0.0.1, [::1] ("*": any).
    allowed_hosts: tuple[str, ...] = setting((), checks.host_names)
    #: Connections served at once; beyond them (and a small reserve for /health): 503.
    max_connections: int = setting(1000, checks.positive_int)
    #: Requests answered at once over all connections (long-polls, SSE, HTTP/2 streams).
    max_streams: int = setting(1000, checks.positive_int)

    @property
    def host(self) -> str:
        """The bind host, without IPv6 brackets (``"::1"`` for ``"[::1]:8080"``)."""
        return checks.split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        """The bind port (0 asks the OS for a free one)."""
        return checks.split_bind(self.bind)[1]

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        return checks.is_loopback_host(self.host)

    def _check_section(self, path: str, given: frozenset[str]) -> None:
        # Runs after the environment overrides: BEZANT_API_TOKEN may supply the token.
        if self.is_loopback or self.token is not None or self.allow_unauthenticated:
            return
        raise ConfigError(
            join_key(path, "bind"),
            f"refusing to listen on {self.bind} without {join_key(path, 'token')} "
            f"(set BEZANT_API_TOKEN or {join_key(path, 'allow_unauthenticated')}: true)",
        )


@dataclass(frozen=True, repr=False)
class BackoffConfig(Section):
    """Reconnect backoff bounds in seconds (exponential with jitter in between)."""

    min: float = setting(1.0, checks.positive_seconds)
    max: float = setting(60.0, checks.seconds)

    def _check_section(self, path: str, given: frozenset[str]) -> None:
        if self.min > self.max:
            # Name whichever key the user actually wrote, so the error points at it.
            key = join_key(path, "max" if "max" in given else "min")
            raise ConfigError(
                key, f"backoff min ({self.min:g}) must not be greater than max ({self.max:g})"
            )


@dataclass(frozen=True, repr=False)
class BarsConfig(Section):
    """Streaming bars (``smh``), subscribed lazily by ``GET /events/bars?conid=N``."""

    #: How far back the bars reach, in the gateway's words ("1d", "2h", "1w").
    period: str = setting("1d", checks.gateway_word)
    #: One bar's length ("1min", "5min", "1h").
    bar: str = setting("5min", checks.gateway_word)
    #: What the bars are made of: "trades", "midpoint", "bid_ask".
    source: str = setting("trades", checks.choice("trades", "midpoint", "bid_ask"))
    #: Include bars outside regular trading hours.
    outside_rth: bool = setting(False, checks.boolean)


@dataclass(frozen=True, repr=False)
class MarketDataConfig(Section):
    """Lazily subscribed per-conid market data."""

    fields: tuple[str, ...] = setting(("31", "84", "86", "85", "88", "87"), checks.field_ids)
    idle_unsubscribe: float = setting(300.0, checks.seconds)
    max_conids: int = setting(100, checks.positive_int)
    resubscribe_interval: float = setting(540.0, checks.seconds)


@dataclass(frozen=True, repr=False)
class EventsConfig(Section):
    """Ingestion: ring sizes, connection timing, subscriptions."""

    capacity: Mapping[str, int] = topic_table(
        _CAPACITY,
        checks.positive_int,
        env={
            "orders": "BEZANT_EVENTS_ORDERS_CAP",
            "pnl": "BEZANT_EVENTS_PNL_CAP",
            "marketdata": "BEZANT_EVENTS_MARKETDATA_CAP",
        },
    )
    heartbeat_timeout: float = setting(90.0, checks.positive_seconds)
    ready_timeout: float = setting(5.0, checks.positive_seconds)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    channels: tuple[str, ...] = setting(("orders", "pnl"), checks.channels)
    capture_other: bool = setting(True, checks.boolean)
    marketdata: MarketDataConfig = field(default_factory=MarketDataConfig)
    bars: BarsConfig = field(default_factory=BarsConfig)
    #: After every gap, fetch the gateway's REST truth and publish it (docs/api.md).
    resync: bool = setting(True, checks.boolean)
    #: Seconds a finished order stays in ``/state/orders`` after it finished.
    finished_orders_ttl: float = setting(86400.0, checks.positive_seconds)

    def capacity_for(self, topic: str) -> int:
        """Ring size for ``topic``: its own key, else its family (``marketdata:N``), else default."""
        return _lookup_topic(self.capacity, topic, _CAPACITY["default"])


@dataclass(frozen=True, repr=False)
class StoreConfig(Section):
    """The optional SQLite event log and its retention."""

    path: str | None = setting(None, checks.db_path, env="BEZANT_EVENTS_DB_PATH")
    synchronous: str = setting("normal", checks.choice("normal", "full"))
    prune_interval: float = setting(3600.0, checks.positive_seconds)
    max_events_per_topic: int | None = setting(None, checks.optional_positive_int)
    retention_days: Mapping[str, float] = topic_table(_RETENTION_DAYS, checks.retention_days)

    def retention_days_for(self, topic: str) -> float:
        """Days kept for ``topic``: its own key, else its family (``marketdata:N``), else default."""
        return _lookup_topic(self.retention_days, topic, _RETENTION_DAYS["default"])


@dataclass(frozen=True, repr=False)
class Config(Section):
    """The whole effective configuration (file, then environment overrides)."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shutdown_grace: float = setting(10.0, checks.seconds)
    # Each sink is a read-only mapping; "name", "type" and the type's own options
    # are checked by the sink layer. Options may hold webhook secrets.
    sinks: tuple[Mapping[str, Any], ...] = setting((), checks.sink_entries, mask=mask_sinks)

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        """The effective configuration as plain dicts/lists/scalars (YAML ready).

        With ``mask_secrets`` (the default) ``http.token``, the userinfo and
        query values of URLs (``gateway.url``, sink URLs), sink header values
        and every sink option whose key looks like a credential are replaced
        by ``"***"``; ``None`` stays ``None`` so "unset" is still visible.
        """
        return to_plain(self, mask_secrets=mask_secrets)

    def to_json(self, *, mask_secrets: bool = True) -> str:
        """:meth:`to_dict` as indented JSON text (what ``check-config`` prints).

        Never raises for anything a YAML file can hold: values JSON has no
        word for (bytes, sets, dates, non-string keys, lone surrogates, NaN)
        are written as strings, lists or null.
        """
        return json_text(self.to_dict(mask_secrets=mask_secrets))


def _lookup_topic(table: Mapping[str, _T], topic: str, fallback: _T) -> _T:
    # ``fallback`` only matters for a table built by hand without "default";
    # loaded configs always carry it.
    if topic in table:
        return table[topic]
    family = topic_family(topic)
    if family != topic and family in table:
        return table[family]
    return table.get("default", fallback)
