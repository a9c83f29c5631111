"""Configuration loading: defaults, the shipped file, env overrides, every way to get it wrong."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bezant_trio.config import (
    BackoffConfig,
    Config,
    ConfigError,
    EventsConfig,
    HttpConfig,
    StoreConfig,
    config_from_mapping,
    config_secrets,
    default_config,
    load_config,
)
from bezant_trio.config.schema import env_variables
from helpers import examples

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "config.yaml"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(data: Any, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, env=env or {})
    return info.value


def assert_one_line(err: ConfigError) -> str:
    text = str(err)
    assert len(text.splitlines()) == 1, text
    assert text == f"{err.key}: {err.message}"
    return text


# --------------------------------------------------------------------------- defaults


def test_defaults_match_the_design() -> None:
    config = default_config()
    assert config == Config()
    assert config.gateway.url == "https://localhost:5000/v1/api"
    assert config.gateway.verify_tls is False
    assert config.gateway.tickle_interval == 60
    assert config.http.bind == "127.0.0.1:8080"
    assert config.http.token is None
    assert config.http.allow_unauthenticated is False
    assert (config.http.host, config.http.port, config.http.is_loopback) == (
        "127.0.0.1",
        8080,
        True,
    )
    assert dict(config.events.capacity) == {
        "orders": 1000,
        "pnl": 5000,
        "marketdata": 2000,
        "default": 1000,
    }
    assert config.events.heartbeat_timeout == 90
    assert config.events.ready_timeout == 5
    assert config.events.backoff == BackoffConfig(min=1, max=60)
    assert config.events.channels == ("orders", "pnl")
    assert config.events.capture_other is True
    md = config.events.marketdata
    assert md.fields == ("31", "84", "86", "85", "88", "87")
    assert (md.idle_unsubscribe, md.max_conids, md.resubscribe_interval) == (300, 100, 540)
    assert config.store.path is None
    assert config.store.synchronous == "normal"
    assert config.gateway.websocket_client == "wsproto"
    assert config.store.prune_interval == 3600
    assert config.store.max_events_per_topic is None
    assert dict(config.store.retention_days) == {
        "orders": 90,
        "pnl": 90,
        "marketdata": 14,
        "gap": 365,
        "default": 30,
    }
    assert config.shutdown_grace == 10
    assert config.sinks == ()


def test_config_is_frozen_all_the_way_down() -> None:
    config = default_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.shutdown_grace = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.events.capacity["orders"] = 1  # type: ignore[index]


def test_empty_mapping_empty_sections_and_empty_file_mean_defaults(tmp_path: Path) -> None:
    assert config_from_mapping({}, env={}) == default_config()
    assert config_from_mapping(None, env={}) == default_config()
    sections = {"gateway": None, "http": None, "events": None, "store": None, "sinks": None}
    assert config_from_mapping(sections, env={}) == default_config()
    assert load_config(write(tmp_path, ""), env={}) == default_config()
    assert load_config(write(tmp_path, "# only comments\n"), env={}) == default_config()


def test_partial_topic_tables_merge_over_defaults() -> None:
    config = config_from_mapping(
        {"events": {"capacity": {"orders": 7, "gap": 50}}, "store": {"retention_days": {"pnl": 1}}},
        env={},
    )
    assert dict(config.events.capacity) == {
        "orders": 7,
        "pnl": 5000,
        "marketdata": 2000,
        "default": 1000,
        "gap": 50,
    }
    assert config.store.retention_days["pnl"] == 1
    assert config.store.retention_days["gap"] == 365


def test_ints_are_accepted_where_seconds_are_expected() -> None:
    config = config_from_mapping({"shutdown_grace": 0, "events": {"ready_timeout": 2.5}}, env={})
    assert config.shutdown_grace == 0.0 and isinstance(config.shutdown_grace, float)
    assert config.events.ready_timeout == 2.5


# --------------------------------------------------------------------------- files


def test_shipped_config_loads_and_equals_defaults_except_store_path() -> None:
    config = load_config(SHIPPED_CONFIG, env={})
    assert config.store.path == "./state/events.db"
    with_log_off = dataclasses.replace(config, store=dataclasses.replace(config.store, path=None))
    assert with_log_off == default_config()


def test_shipped_config_lists_every_key_of_the_schema() -> None:
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    effective = default_config().to_dict()

    def keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in tree.items():
            found.add(prefix + key)
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.")
        return found

    # `sinks:` is null in the file so the commented example can be uncommented in place.
    assert keys(shipped) == keys(effective)
    assert "# - {name: audit, type: file" in SHIPPED_CONFIG.read_text(encoding="utf-8")


def test_load_config_without_path_uses_cwd_config_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}) == default_config()
    write(tmp_path, "shutdown_grace: 3\n")
    assert load_config(env={}).shutdown_grace == 3


def test_load_config_without_path_or_file_still_applies_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(env={"BEZANT_EVENTS_PNL_CAP": "9"}).events.capacity["pnl"] == 9


def test_load_config_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BEZANT_BIND", "127.0.0.1:9999")
    assert load_config(write(tmp_path, "")).http.port == 9999


def test_config_from_mapping_ignores_os_environ_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BEZANT_BIND", "127.0.0.1:9999")
    assert config_from_mapping({}).http.port == 8080


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    text = "sinks:\n  - &base {name: a, type: file, path: x.jsonl}\n  - <<: *base\n    name: b\n"
    first, second = load_config(write(tmp_path, text), env={}).sinks
    assert dict(second) == {"name": "b", "type": "file", "path": "x.jsonl"}
    assert first["name"] == "a"


# --------------------------------------------------------------------------- env overrides


@pytest.mark.parametrize(
    ("variable", "value", "read", "expected"),
    [
        (
            "IBKR_GATEWAY_URL",
            "http://gw:5001/v1/api",
            lambda c: c.gateway.url,
            "http://gw:5001/v1/api",
        ),
        ("IBKR_GATEWAY_URL", "https://gw/v1/api/", lambda c: c.gateway.url, "https://gw/v1/api"),
        ("BEZANT_BIND", "127.0.0.2:0", lambda c: (c.http.host, c.http.port), ("127.0.0.2", 0)),
        ("BEZANT_VERIFY_TLS", "1", lambda c: c.gateway.verify_tls, True),
        ("BEZANT_VERIFY_TLS", "TRUE", lambda c: c.gateway.verify_tls, True),
        ("BEZANT_VERIFY_TLS", "Yes", lambda c: c.gateway.verify_tls, True),
        ("BEZANT_VERIFY_TLS", "0", lambda c: c.gateway.verify_tls, False),
        ("BEZANT_VERIFY_TLS", "false", lambda c: c.gateway.verify_tls, False),
        ("BEZANT_VERIFY_TLS", "NO", lambda c: c.gateway.verify_tls, False),
        ("BEZANT_API_TOKEN", "s3cr3t", lambda c: c.http.token, "s3cr3t"),
        ("BEZANT_EVENTS_DB_PATH", "/var/lib/bt/e.db", lambda c: c.store.path, "/var/lib/bt/e.db"),
        ("BEZANT_EVENTS_DB_PATH", "", lambda c: c.store.path, None),
        ("BEZANT_EVENTS_ORDERS_CAP", "42", lambda c: c.events.capacity["orders"], 42),
        ("BEZANT_EVENTS_PNL_CAP", " 43 ", lambda c: c.events.capacity["pnl"], 43),
        ("BEZANT_EVENTS_MARKETDATA_CAP", "44", lambda c: c.events.capacity_for("marketdata:1"), 44),
    ],
)
def test_env_override(variable: str, value: str, read: Any, expected: Any) -> None:
    # The file sets something else, so the override is visible.
    data = {
        "gateway": {"url": "https://file/v1/api", "verify_tls": True},
        "http": {"bind": "127.0.0.1:1", "token": "from-file"},
        "store": {"path": "file.db"},
        "events": {"capacity": {"orders": 1, "pnl": 1, "marketdata": 1}},
    }
    assert read(config_from_mapping(data, env={variable: value})) == expected


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "http: {bind: '127.0.0.1:1'}\nstore: {path: a.db}\n")
    config = load_config(path, env={"BEZANT_BIND": "[::1]:2", "BEZANT_EVENTS_DB_PATH": "b.db"})
    assert (config.http.host, config.http.port, config.store.path) == ("::1", 2, "b.db")


def test_env_token_unlocks_a_public_bind_from_the_file() -> None:
    data = {"http": {"bind": "0.0.0.0:8080"}}
    assert config_from_mapping(data, env={"BEZANT_API_TOKEN": "t0k"}).http.token == "t0k"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BEZANT_EVENTS_ORDERS_CAP": "abc"}, "expected a positive integer, got 'abc'"),
        ({"BEZANT_EVENTS_PNL_CAP": "0"}, "expected a positive integer, got 0"),
        ({"BEZANT_EVENTS_MARKETDATA_CAP": "-5"}, "expected a positive integer, got '-5'"),
        ({"BEZANT_EVENTS_ORDERS_CAP": ""}, "expected a positive integer"),
        ({"BEZANT_VERIFY_TLS": "maybe"}, "expected one of 1/0/true/false/yes/no, got 'maybe'"),
        ({"BEZANT_BIND": "8080"}, "cannot parse '8080': expected host:port"),
        ({"BEZANT_BIND": "0.0.0.0:99999"}, "out of range"),
        ({"IBKR_GATEWAY_URL": "ftp://gw/v1"}, "http"),
        ({"IBKR_GATEWAY_URL": ""}, "http"),
    ],
)
def test_bad_env_value_is_reported_under_the_variable_name(
    env: dict[str, str], message: str
) -> None:
    err = config_error({}, env)
    assert err.key == next(iter(env))
    assert message in assert_one_line(err)


def test_bad_env_token_never_echoes_its_value() -> None:
    err = config_error({}, {"BEZANT_API_TOKEN": "hunter2 with space"})
    assert err.key == "BEZANT_API_TOKEN"
    assert "hunter2" not in assert_one_line(err)


# --------------------------------------------------------------------------- bad configs

BAD_CONFIGS: list[tuple[str, Any, str, str]] = [
    # (test id, document, expected key, expected fragment of the message)
    ("unknown top-level key", {"gatway": {}}, "gatway", "did you mean 'gateway'?"),
    ("unknown section key", {"http": {"tokn": "x"}}, "http.tokn", "did you mean 'token'?"),
    ("unknown nested key", {"events": {"backof": {}}}, "events.backof", "did you mean 'backoff'?"),
    (
        "unknown 3-deep key",
        {"events": {"backoff": {"mid": 1}}},
        "events.backoff.mid",
        "unknown key",
    ),
    (
        "unknown key in marketdata",
        {"events": {"marketdata": {"feilds": ["31"]}}},
        "events.marketdata.feilds",
        "did you mean 'fields'?",
    ),
    ("unknown key, no suggestion", {"zzz": 1}, "zzz", "expected one of: gateway"),
    ("non-string key", {True: 1}, "true", "unknown key"),
    ("section not a mapping", {"gateway": "https://x"}, "gateway", "expected a mapping"),
    (
        "wrong type bool",
        {"gateway": {"verify_tls": "yes please"}},
        "gateway.verify_tls",
        "expected a boolean (true or false), got 'yes please'",
    ),
    (
        "bool as int",
        {"events": {"capacity": {"orders": True}}},
        "events.capacity.orders",
        "expected a positive integer, got true",
    ),
    (
        "bool as seconds",
        {"shutdown_grace": False},
        "shutdown_grace",
        "expected a duration in seconds >= 0, got false",
    ),
    (
        "negative capacity",
        {"events": {"capacity": {"pnl": -1}}},
        "events.capacity.pnl",
        "positive integer, got -1",
    ),
    (
        "zero capacity",
        {"events": {"capacity": {"default": 0}}},
        "events.capacity.default",
        "positive integer, got 0",
    ),
    (
        "float capacity",
        {"events": {"capacity": {"orders": 10.5}}},
        "events.capacity.orders",
        "positive integer",
    ),
    (
        "string capacity",
        {"events": {"capacity": {"orders": "100"}}},
        "events.capacity.orders",
        "got '100'",
    ),
    ("empty topic name", {"events": {"capacity": {"": 5}}}, "events.capacity.''", "non-empty"),
    (
        "non-string topic",
        {"store": {"retention_days": {7: 5}}},
        "store.retention_days.7",
        "strings",
    ),
    (
        "zero max_conids",
        {"events": {"marketdata": {"max_conids": 0}}},
        "events.marketdata.max_conids",
        "positive integer",
    ),
    (
        "zero heartbeat",
        {"events": {"heartbeat_timeout": 0}},
        "events.heartbeat_timeout",
        "> 0, got 0",
    ),
    ("zero ready", {"events": {"ready_timeout": 0.0}}, "events.ready_timeout", "> 0"),
    ("zero tickle", {"gateway": {"tickle_interval": 0}}, "gateway.tickle_interval", "> 0"),
    ("zero prune", {"store": {"prune_interval": 0}}, "store.prune_interval", "> 0"),
    ("zero backoff min", {"events": {"backoff": {"min": 0}}}, "events.backoff.min", "> 0"),
    ("negative grace", {"shutdown_grace": -1}, "shutdown_grace", ">= 0, got -1"),
    (
        "negative idle",
        {"events": {"marketdata": {"idle_unsubscribe": -0.5}}},
        "events.marketdata.idle_unsubscribe",
        ">= 0",
    ),
    ("nan seconds", {"shutdown_grace": math.nan}, "shutdown_grace", "got nan"),
    ("inf seconds", {"shutdown_grace": math.inf}, "shutdown_grace", "got inf"),
    ("huge int seconds", {"shutdown_grace": 10**400}, "shutdown_grace", "a very large integer"),
    (
        "min > max backoff",
        {"events": {"backoff": {"min": 10, "max": 5}}},
        "events.backoff.max",
        "min (10) must not be greater than max (5)",
    ),
    (
        "min > default max",
        {"events": {"backoff": {"min": 120}}},
        "events.backoff.min",
        "must not be greater than max (60)",
    ),
    (
        "unparsable bind",
        {"http": {"bind": "localhost"}},
        "http.bind",
        "cannot parse 'localhost': expected host:port",
    ),
    ("bind without host", {"http": {"bind": ":8080"}}, "http.bind", "expected host:port"),
    (
        "bind port not a number",
        {"http": {"bind": "localhost:http"}},
        "http.bind",
        "expected host:port",
    ),
    (
        "bind port too big",
        {"http": {"bind": "127.0.0.1:65536"}},
        "http.bind",
        "out of range (0-65535)",
    ),
    ("bind bare ipv6", {"http": {"bind": "::1:8080"}}, "http.bind", "in brackets"),
    ("bind bad ipv6", {"http": {"bind": "[nope]:8080"}}, "http.bind", "not an IPv6 address"),
    (
        "bind not a string",
        {"http": {"bind": 8080}},
        "http.bind",
        "expected a 'host:port' string, got 8080",
    ),
    (
        "bad URL scheme",
        {"gateway": {"url": "ftp://localhost:5000/v1/api"}},
        "gateway.url",
        "http:// or https://",
    ),
    ("URL without host", {"gateway": {"url": "https:///v1/api"}}, "gateway.url", "with a host"),
    ("URL bad port", {"gateway": {"url": "https://gw:99999/"}}, "gateway.url", "URL"),
    ("URL not a string", {"gateway": {"url": None}}, "gateway.url", "got null"),
    (
        "unknown websocket client",
        {"gateway": {"websocket_client": "websockets"}},
        "gateway.websocket_client",
        "expected 'wsproto' or 'trio-websocket', got 'websockets'",
    ),
    (
        "bad synchronous",
        {"store": {"synchronous": "off"}},
        "store.synchronous",
        "expected 'normal' or 'full', got 'off'",
    ),
    ("empty store path", {"store": {"path": ""}}, "store.path", "file path or null"),
    (
        "bad max_events_per_topic",
        {"store": {"max_events_per_topic": 0}},
        "store.max_events_per_topic",
        "positive integer or null",
    ),
    (
        "zero retention",
        {"store": {"retention_days": {"gap": 0}}},
        "store.retention_days.gap",
        "number of days > 0",
    ),
    (
        "bad channel",
        {"events": {"channels": ["orders", "pnll"]}},
        "events.channels[1]",
        "did you mean 'pnl'?",
    ),
    (
        "duplicate channel",
        {"events": {"channels": ["pnl", "pnl"]}},
        "events.channels[1]",
        "duplicate channel 'pnl'",
    ),
    (
        "channels not a list",
        {"events": {"channels": "orders"}},
        "events.channels",
        "expected a list",
    ),
    (
        "marketdata field as int",
        {"events": {"marketdata": {"fields": ["31", 84]}}},
        "events.marketdata.fields[1]",
        "quote field ids",
    ),
    (
        "marketdata field not digits",
        {"events": {"marketdata": {"fields": ["last"]}}},
        "events.marketdata.fields[0]",
        "string of digits",
    ),
    (
        "no marketdata fields",
        {"events": {"marketdata": {"fields": []}}},
        "events.marketdata.fields",
        "at least one",
    ),
    ("sinks not a list", {"sinks": {"name": "a", "type": "file"}}, "sinks", "expected a list"),
    ("sink not a mapping", {"sinks": ["file"]}, "sinks[0]", "expected a mapping"),
    (
        "second sink not a mapping",
        {"sinks": [{"name": "a", "type": "test"}, 7]},
        "sinks[1]",
        "expected a mapping with 'name' and 'type', got 7",
    ),
    ("top level is a list", [1, 2], "<dict>", "expected a mapping of sections"),
    ("top level is a string", "gateway", "<dict>", "got 'gateway'"),
    ("multi-line key stays one line", {"a\nb": 1}, "'a\\nb'", "unknown key"),
]


@pytest.mark.parametrize(
    ("document", "key", "fragment"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_is_one_line_naming_the_key(document: Any, key: str, fragment: str) -> None:
    err = config_error(document)
    text = assert_one_line(err)
    assert err.key == key
    assert fragment in err.message, text


def test_secret_token_of_the_wrong_type_is_described_not_shown() -> None:
    err = config_error({"http": {"token": 987654321}})
    assert err.key == "http.token"
    assert "987654321" not in str(err)
    assert "an integer" in err.message


@pytest.mark.parametrize("token", ["", "has space", "trailing\n"])
def test_unusable_token_is_refused_without_echo(token: str) -> None:
    err = config_error({"http": {"token": token}})
    assert err.key == "http.token"
    if token:
        assert token.strip() not in str(err)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("gateway:\n  url: [unclosed\n", "YAML syntax error at line 3, column 1"),
        ("gateway:\n  url: a\n    bad: indent\n", "YAML syntax error at line 3, column 8"),
        ("http:\n\tbind: x\n", "YAML syntax error at line 2"),
        ("a: 1\n---\nb: 2\n", "YAML syntax error at line 2"),
        ("http:\n  bind: a\n  bind: b\n", "duplicate key 'bind' at line 3, column 3"),
    ],
)
def test_yaml_errors_name_the_file_and_position(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text, name="bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == str(path)
    assert fragment in assert_one_line(info.value)


def test_undecodable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"gateway:\n  url: \xff\xfe\x00\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == str(path)
    assert_one_line(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_file_whose_top_level_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="expected a mapping of sections") as info:
        load_config(path, env={})
    assert info.value.key == str(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(missing, env={})
    assert info.value.key == str(missing)
    assert_one_line(info.value)


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path, env={})


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown_grace: !!python/object/apply:os.getpid []\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line 1"):
        load_config(path, env={})


def test_config_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("a.b", "bad")))
    assert (err.key, err.message, str(err)) == ("a.b", "bad", "a.b: bad")


# --------------------------------------------------------------------------- exposure


@pytest.mark.parametrize("bind", ["0.0.0.0:8080", "[::]:8080", "192.168.1.5:80", "myhost:8080"])
def test_public_bind_without_token_is_refused(bind: str) -> None:
    err = config_error({"http": {"bind": bind}})
    assert str(err) == (
        f"http.bind: refusing to listen on {bind} without http.token "
        "(set BEZANT_API_TOKEN or http.allow_unauthenticated: true)"
    )


def test_public_bind_from_env_without_token_is_refused() -> None:
    err = config_error({}, {"BEZANT_BIND": "0.0.0.0:8080"})
    assert err.key == "http.bind"


def test_public_bind_with_token_or_explicit_opt_out_is_accepted() -> None:
    with_token = config_from_mapping({"http": {"bind": "0.0.0.0:8080", "token": "t"}}, env={})
    assert with_token.http.is_loopback is False
    opted_out = {"http": {"bind": "0.0.0.0:8080", "allow_unauthenticated": True}}
    assert config_from_mapping(opted_out, env={}).http.port == 8080


@pytest.mark.parametrize(
    ("bind", "host", "port", "loopback"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, True),
        ("127.8.9.10:1", "127.8.9.10", 1, True),
        ("localhost:0", "localhost", 0, True),
        ("LocalHost:65535", "LocalHost", 65535, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", 80, True),
        ("[::]:8080", "::", 8080, False),
        ("[2001:db8::1]:443", "2001:db8::1", 443, False),
        ("0.0.0.0:8080", "0.0.0.0", 8080, False),
        ("example.com:80", "example.com", 80, False),
    ],
)
def test_bind_parsing(bind: str, host: str, port: int, loopback: bool) -> None:
    http = HttpConfig(bind=bind, token="t")
    assert (http.host, http.port, http.is_loopback) == (host, port, loopback)
    assert config_from_mapping({"http": {"bind": bind, "token": "t"}}, env={}).http == http


# --------------------------------------------------------------------------- to_dict


def test_to_dict_masks_token_and_sink_secrets() -> None:
    sink = {
        "name": "hook",
        "type": "webhook",
        "url": "https://example.com/hook",
        "secret": "whsec_abc",
        "signing_secret_file": None,
        "headers": {"X-Api-Token": "tok", "Accept": "json"},
        "basic": [{"Password": "pw"}],
        "client_creds": "c",
        "credentials": "cc",
        "topics": ["orders"],
    }
    config = config_from_mapping(
        {"http": {"token": "api-token"}, "sinks": [sink, {"name": "t", "type": "test"}]}, env={}
    )
    masked = config.to_dict()
    assert masked["http"]["token"] == "***"
    assert masked["sinks"][0] == {
        "name": "hook",
        "type": "webhook",
        "url": "https://example.com/hook",
        "secret": "***",
        "signing_secret_file": None,
        "headers": {"X-Api-Token": "***", "Accept": "***"},
        "basic": [{"Password": "***"}],
        "client_creds": "***",
        "credentials": "***",
        "topics": ["orders"],
    }
    assert masked["sinks"][1] == {"name": "t", "type": "test"}
    for secret in ("api-token", "whsec_abc", "tok", "pw"):
        assert secret not in repr(config)
        assert f"'{secret}'" not in str(masked)

    plain = config.to_dict(mask_secrets=False)
    assert plain["http"]["token"] == "api-token"
    assert plain["sinks"][0] == sink


def test_to_dict_leaves_unset_token_as_none_and_is_plain_yaml() -> None:
    data = default_config().to_dict()
    assert data["http"]["token"] is None
    assert data["events"]["channels"] == ["orders", "pnl"]
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_to_dict_round_trips_through_config_from_mapping() -> None:
    config = load_config(SHIPPED_CONFIG, env={"BEZANT_API_TOKEN": "x", "BEZANT_BIND": "[::]:1"})
    assert config_from_mapping(config.to_dict(mask_secrets=False), env={}) == config


def test_sinks_pass_through_untouched() -> None:
    sink = {"name": "audit", "type": "file", "topics": ["orders", "gap"], "weird": {"n": 1}}
    (loaded,) = config_from_mapping({"sinks": [sink]}, env={}).sinks
    assert dict(loaded) == sink


def test_sink_entries_are_checked_here_only_for_their_shape() -> None:
    # Names, types and options are the sink layer's (check-config and run still
    # refuse these through it); the config keeps every mapping as written.
    entries = [{"type": "file"}, {"name": " ", "type": 3}, {"name": "a"}, {"name": "a"}]
    loaded = config_from_mapping({"sinks": entries}, env={}).sinks
    assert [dict(sink) for sink in loaded] == entries
    with pytest.raises(TypeError):
        loaded[0]["type"] = "webhook"  # type: ignore[index]


def test_a_loaded_config_survives_pickling() -> None:
    sink = {"name": "t", "type": "test", "topics": ["orders"]}
    config = load_config(SHIPPED_CONFIG, env={"BEZANT_API_TOKEN": "tok-12345"})
    config = dataclasses.replace(config, sinks=config_from_mapping({"sinks": [sink]}).sinks)
    assert pickle.loads(pickle.dumps(config)) == config


# --------------------------------------------------------------------------- 64-bit integers

# `BEZANT_SEED=1175831349 pytest tests/reliability/test_fuzz_config_cli.py` drew this
# document; check-config accepted it and then crashed printing 2**70 as JSON.
FUZZ_2_70_DOCUMENT = """\
events:
  backoff: {}
  capacity:
    default: 1180591620717411303424
    orders: 1
  capture_other: false
  heartbeat_timeout: 30
gateway:
  tickle_interval: 1180591620717411303424
http: {}
store:
  retention_days:
    default: 0.5
"""


def test_fuzz_document_with_2_70_capacity_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, FUZZ_2_70_DOCUMENT), env={})
    assert info.value.key == "events.capacity.default"
    assert "no greater than 9223372036854775807" in assert_one_line(info.value)
    assert "a very large integer" in info.value.message


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"events": {"capacity": {"orders": 2**63}}}, "events.capacity.orders"),
        ({"events": {"capacity": {"gap": 2**70}}}, "events.capacity.gap"),
        ({"events": {"marketdata": {"max_conids": 2**64}}}, "events.marketdata.max_conids"),
        ({"store": {"max_events_per_topic": 2**63}}, "store.max_events_per_topic"),
        ({"store": {"max_events_per_topic": 10**400}}, "store.max_events_per_topic"),
    ],
)
def test_integers_past_signed_64_bits_are_refused(document: Any, key: str) -> None:
    err = config_error(document)
    assert err.key == key
    assert "no greater than 9223372036854775807 (2**63 - 1)" in assert_one_line(err)


def test_the_largest_64_bit_integer_is_accepted() -> None:
    config = config_from_mapping(
        {
            "events": {"capacity": {"orders": 2**63 - 1}},
            "store": {"max_events_per_topic": 2**63 - 1},
        },
        env={},
    )
    assert config.events.capacity["orders"] == config.store.max_events_per_topic == 2**63 - 1
    assert json.loads(config.to_json())["events"]["capacity"]["orders"] == 2**63 - 1


YAML_VALUES = """\
sinks:
  - name: odd
    type: anything
    huge: 1180591620717411303424
    binary: !!binary aGVsbG8=
    set: !!set {b, a}
    when: 2001-12-14t21:59:43.10-05:00
    day: 2002-12-14
    keys: {1: int, 2.5: float, null: none, true: bool, 2001-01-01: date}
    surrogate: "\\ud800"
    nan: .nan
    inf: -.inf
    deep: DEEP
"""


def test_to_json_writes_every_value_yaml_can_hold(tmp_path: Path) -> None:
    deep = "[" * 400 + "]" * 400
    config = load_config(write(tmp_path, YAML_VALUES.replace("DEEP", deep)), env={})
    (sink,) = json.loads(config.to_json())["sinks"]
    assert sink["huge"] == 2**70
    assert sink["binary"] == "aGVsbG8="
    assert sink["set"] == ["a", "b"]
    assert sink["when"] == "2001-12-14T21:59:43.100000-05:00"
    assert sink["day"] == "2002-12-14"
    assert sink["keys"] == {"1": "bool", "2.5": "float", "null": "none", "2001-01-01": "date"}
    assert sink["surrogate"] == "\\ud800"
    assert sink["nan"] is None and sink["inf"] is None
    depth, value = 0, sink["deep"]
    while value:
        depth, value = depth + 1, value[0]
    assert depth == 399


def test_to_json_writes_integers_python_cannot_print_in_decimal() -> None:
    config = config_from_mapping({"sinks": [{"name": "x", "type": "t", "n": 10**5000}]}, env={})
    assert json.loads(config.to_json())["sinks"][0]["n"] == hex(10**5000)


# --------------------------------------------------------------------------- secrets


def test_empty_env_token_is_an_error_not_authentication_off() -> None:
    err = config_error({"http": {"token": "from-file"}}, {"BEZANT_API_TOKEN": ""})
    assert err.key == "BEZANT_API_TOKEN"
    assert "empty" in assert_one_line(err)
    assert "from-file" not in str(err)


URL_SECRETS = ("hunter2", "s3cr3t-query", "sig-value-42")


def test_gateway_url_userinfo_and_query_values_are_masked() -> None:
    url = "https://admin:hunter2@gw.example:5000/v1/api?token=s3cr3t-query&sig=sig-value-42&flag"
    config = config_from_mapping({"gateway": {"url": url}}, env={})
    assert config.gateway.url == url
    shown = config.to_dict()["gateway"]["url"]
    assert shown == "https://***@gw.example:5000/v1/api?token=***&sig=***&***"
    assert config.to_dict(mask_secrets=False)["gateway"]["url"] == url
    for secret in URL_SECRETS:
        assert secret not in repr(config) and secret not in config.to_json()
    secrets = config_secrets(config)
    assert {"admin:hunter2", "hunter2", "s3cr3t-query", "sig-value-42"} <= set(secrets)
    assert not any("gw.example" in secret for secret in secrets)


def test_sink_url_options_and_headers_are_masked_whatever_their_spelling() -> None:
    sink = {
        "name": "hook",
        "type": "webhook",
        "url": "https://bot:hunter2@hooks.example/x?key=s3cr3t-query",
        "servers": ["nats://u:sig-value-42@127.0.0.1:4222", "nats://127.0.0.1:4223"],
        "headers": {
            "X-Api-Key": "key-value-1",
            "cookie": "session=cookie-value-2",
            "X-Custom": ["list-value-3"],
            "Accept": "application/json",
        },
    }
    config = config_from_mapping({"sinks": [sink]}, env={})
    (masked,) = config.to_dict()["sinks"]
    assert masked["url"] == "https://***@hooks.example/x?key=***"
    assert masked["servers"] == ["nats://***@127.0.0.1:4222", "nats://127.0.0.1:4223"]
    assert masked["headers"] == {
        "X-Api-Key": "***",
        "cookie": "***",
        "X-Custom": ["***"],
        "Accept": "***",
    }
    secrets = config_secrets(config)
    for value in (*URL_SECRETS[:2], "sig-value-42", "key-value-1", "session=cookie-value-2"):
        assert value in secrets, value
        assert value not in repr(config) and value not in config.to_json()
    assert "list-value-3" in secrets and "application/json" in secrets


def test_secret_mapping_under_a_credential_key_gives_every_value_to_the_redactor() -> None:
    sink = {"name": "x", "type": "t", "credentials": {"user": "someone", "password": "pw-123456"}}
    config = config_from_mapping({"sinks": [sink]}, env={})
    assert config.to_dict()["sinks"][0]["credentials"] == "***"
    assert {"someone", "pw-123456"} <= set(config_secrets(config))


@pytest.mark.parametrize(
    ("document", "env", "key"),
    [
        ({"gateway": {"url": "ftp://admin:hunter2@gw/v1?token=s3cr3t-query"}}, {}, "gateway.url"),
        ({"gateway": {"url": "https://admin:hunter2@gw:99999/?t=s3cr3t-query"}}, {}, "gateway.url"),
        # A space ends a URL in free text; the value is masked as a whole first.
        ({"gateway": {"url": "https://admin:hun ter2@gw/?t=s3cr3t-query"}}, {}, "gateway.url"),
        ({}, {"IBKR_GATEWAY_URL": "gopher://admin:hunter2@gw/?t=s3cr3t-query"}, "IBKR_GATEWAY_URL"),
        (
            {
                "sinks": [
                    "https://admin:hunter2@a-rather-long-host-name.example/hook?t=s3cr3t-query"
                ]
            },
            {},
            "sinks[0]",
        ),
        ({"http": {"bind": "http://admin:hunter2@h:80"}}, {}, "http.bind"),
        ({"https://admin:hunter2@gw/?t=s3cr3t-query": 1}, {}, "'https://***@gw/?t=***'"),
    ],
)
def test_config_errors_never_echo_url_passwords_or_query_values(
    document: Any, env: dict[str, str], key: str
) -> None:
    err = config_error(document, env)
    assert err.key == key
    text = assert_one_line(err)
    for secret in ("hunter2", "hun ter2", "s3cr3t-query"):
        assert secret not in text, text
    assert "***" in text, text


def test_config_error_masks_any_url_whoever_raises_it() -> None:
    err = ConfigError("x", "cannot reach https://u:hunter2@gw/?t=s3cr3t-query now")
    assert str(err) == "x: cannot reach https://***@gw/?t=*** now"


# --------------------------------------------------------------------------- schema and file


def test_every_env_variable_of_the_schema_is_documented_in_config_yaml() -> None:
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    header = text.split("\n\n")[0]  # the comment block at the top of the file
    listed = set(re.findall(r"\b(?:BEZANT|IBKR)_[A-Z0-9_]+", header))
    assert listed == set(env_variables(Config))
    assert env_variables(Config)["BEZANT_EVENTS_PNL_CAP"] == "events.capacity.pnl"
    assert env_variables(Config)["BEZANT_API_TOKEN"] == "http.token"


# --------------------------------------------------------------------------- topic families


def test_capacity_for_uses_topic_then_family_then_default() -> None:
    events = config_from_mapping(
        {"events": {"capacity": {"gap": 11, "marketdata:265598": 12, "ntf": 13}}}, env={}
    ).events
    assert events.capacity_for("orders") == 1000
    assert events.capacity_for("pnl") == 5000
    assert events.capacity_for("marketdata") == 2000
    assert events.capacity_for("marketdata:8314") == 2000
    assert events.capacity_for("marketdata:265598") == 12
    assert events.capacity_for("gap") == 11
    assert events.capacity_for("ntf") == 13
    assert events.capacity_for("trades") == 1000
    assert events.capacity_for("blt") == 1000
    assert events.capacity_for("unknown:thing") == 1000


def test_retention_days_for_uses_topic_then_family_then_default() -> None:
    store = StoreConfig()
    assert store.retention_days_for("orders") == 90
    assert store.retention_days_for("pnl") == 90
    assert store.retention_days_for("marketdata:265598") == 14
    assert store.retention_days_for("gap") == 365
    assert store.retention_days_for("sts") == 30
    assert EventsConfig().capacity_for("sts") == 1000


def test_hand_built_tables_without_default_fall_back_to_built_in_default() -> None:
    assert EventsConfig(capacity={"orders": 5}).capacity_for("marketdata:1") == 1000
    assert StoreConfig(retention_days={}).retention_days_for("orders") == 30


# --------------------------------------------------------------------------- properties

_KNOWN_KEYS = [
    "gateway",
    "http",
    "events",
    "store",
    "shutdown_grace",
    "sinks",
    "url",
    "verify_tls",
    "tickle_interval",
    "bind",
    "token",
    "allow_unauthenticated",
    "capacity",
    "heartbeat_timeout",
    "ready_timeout",
    "backoff",
    "min",
    "max",
    "channels",
    "capture_other",
    "marketdata",
    "fields",
    "idle_unsubscribe",
    "max_conids",
    "resubscribe_interval",
    "path",
    "synchronous",
    "websocket_client",
    "prune_interval",
    "max_events_per_topic",
    "retention_days",
    "orders",
    "pnl",
    "gap",
    "default",
    "name",
    "type",
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "orders",
            "pnl",
            "trades",
            "31",
            "normal",
            "full",
            "127.0.0.1:0",
            "0.0.0.0:80",
            "[::1]:1",
            "https://gw/v1",
        ]
    )
)
_keys = st.sampled_from(_KNOWN_KEYS) | st.text(max_size=8)
_documents = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=30,
)


def _near_valid(schema: Any, *, top: bool = False) -> st.SearchStrategy[Any]:
    """Documents shaped like the schema, any part of which may be replaced by junk.

    Junk is weighted low so that a good share of documents is valid and the
    round trip in ``_check_outcome`` is exercised too.
    """
    if isinstance(schema, dict):
        valid: st.SearchStrategy[Any] = st.fixed_dictionaries(
            {}, optional={key: _near_valid(value) for key, value in schema.items()}
        )
    elif isinstance(schema, list) and schema:
        valid = st.lists(st.sampled_from(schema), max_size=len(schema), unique_by=repr)
    else:
        valid = st.just(schema)
    if top:
        return valid
    junk = _scalars | _documents
    return st.sampled_from(range(12)).flatmap(lambda roll: junk if roll == 0 else valid)


_SCHEMA = default_config().to_dict() | {
    "sinks": [{"name": "a", "type": "file"}, {"name": "b", "type": "test", "secret": "s"}],
}
_SCHEMA["http"] = _SCHEMA["http"] | {"allowed_hosts": ["bezant.local", "[::1]", "*"]}
_ENV_NAMES = [
    "IBKR_GATEWAY_URL",
    "BEZANT_BIND",
    "BEZANT_VERIFY_TLS",
    "BEZANT_API_TOKEN",
    "BEZANT_EVENTS_DB_PATH",
    "BEZANT_EVENTS_ORDERS_CAP",
    "BEZANT_EVENTS_PNL_CAP",
    "BEZANT_EVENTS_MARKETDATA_CAP",
]
_envs = st.dictionaries(
    st.sampled_from(_ENV_NAMES),
    st.text(max_size=12) | st.sampled_from(["1", "no", "127.0.0.1:1", "https://gw", "5", "0"]),
    max_size=4,
)


def _check_outcome(build: Any) -> None:
    try:
        config = build()
    except ConfigError as err:
        assert_one_line(err)
        assert err.key
        return
    assert isinstance(config, Config)
    # A valid config's plain form is valid and means the same thing.
    assert config_from_mapping(config.to_dict(mask_secrets=False), env={}) == config
    yaml.safe_dump(config.to_dict())
    assert json.loads(config.to_json())["http"]["bind"] == config.http.bind


@settings(max_examples=examples(300), deadline=None)
@given(document=_documents | _near_valid(_SCHEMA, top=True), env=_envs)
def test_any_document_gives_a_config_or_a_config_error(document: Any, env: dict[str, str]) -> None:
    _check_outcome(lambda: config_from_mapping(document, env=env))


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_near_valid(_SCHEMA, top=True))
def test_any_yaml_file_gives_a_config_or_a_config_error(document: Any) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        _check_outcome(lambda: load_config(path, env={}))


@settings(max_examples=examples(200), deadline=None)
@given(text=st.text(max_size=80) | st.binary(max_size=40))
def test_any_file_content_gives_a_config_or_a_config_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        _check_outcome(lambda: load_config(path, env={}))


_YAML_PIECES = [
    *"abc:{}[]-&*!<>|'\"#\n \t.,019%@`?~=",
    "gateway",
    "url",
    "on",
    "yes",
    "!!binary",
    "<<",
]


@settings(max_examples=examples(200), deadline=None)
@given(text=st.lists(st.sampled_from(_YAML_PIECES), max_size=60).map("".join))
def test_yaml_shaped_text_gives_a_config_or_a_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        _check_outcome(lambda: load_config(path, env={}))
