"""Sink config validation, plugin discovery and plugin errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from bezant_trio import hookimpl
from bezant_trio.sinks import Option
from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.sinks.plugins import create_plugin_manager, plugin_manager, sink_types
from bezant_trio.sinks.specs import validate_sink_configs
from bezant_trio.sinks.testing import TestSink
from bezant_trio.store.hub import Hub


def _hub() -> Hub:
    return Hub(capacity_for=lambda topic: 100)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "a", "type": "fiel", "path": "x"}, "sink 'a': unknown sink type 'fiel'"),
        ({"name": "a", "type": "fiel", "path": "x"}, "did you mean 'file'?"),
        ({"name": "a", "type": "file"}, "sink 'a' (type file): missing required option 'path'"),
        (
            {"name": "a", "type": "file", "path": "/tmp/x", "fsinc": "never"},
            "unknown option 'fsinc' (did you mean 'fsync'?)",
        ),
        (
            {"name": "a", "type": "file", "path": "/tmp/x", "fsync": "always"},
            "option 'fsync' must be one of 'batch', 'never', got 'always'",
        ),
        (
            {"name": "a", "type": "file", "path": "/no/such/dir/x"},
            "option 'path' the directory /no/such/dir does not exist",
        ),
        ({"name": "a", "type": "test", "topics": "orders"}, "`topics` must be a list"),
        ({"name": "a", "type": "test", "topics": []}, "`topics` is empty"),
        ({"name": "a", "type": "test", "topics": [""]}, "`topics` entries must be non-empty"),
        ({"name": "a", "type": "test", "batch_size": 0}, "`batch_size` must be an integer"),
        ({"name": "a", "type": "test", "batch_size": True}, "`batch_size` must be an integer"),
        ({"name": "a", "type": "test", "retry": {"min": 0}}, "`retry.min` must be more than 0"),
        ({"name": "a", "type": "test", "retry": {"min": 5, "max": 1}}, "`retry.max` must be at"),
        ({"name": "a", "type": "test", "retry": {"mni": 1}}, "retry: unknown option 'mni'"),
        ({"name": "a", "type": "test", "retry": 3}, "`retry` must be a mapping"),
        ({"name": "a", "type": "test", "fail_rate": "x"}, "option 'fail_rate' must be a number"),
        ({"name": "a", "type": "webhook", "url": "ftp://x"}, "option 'url' must be an http://"),
        ({"name": "a", "type": "webhook", "url": "http://x", "timeout": 0}, "'timeout' must be"),
    ],
)
def test_bad_sink_config_is_one_clear_line_naming_the_sink(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(SinkConfigError) as caught:
        SinkManager(_hub(), [config])
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        ({"name": "a", "type": "file"}, "sinks: expected a list of sink mappings, got a mapping"),
        ("file", "sinks: expected a list of sink mappings, got 'file'"),
        (["file"], "sinks[0]: expected a mapping with 'name' and 'type', got 'file'"),
        ([{"type": "file"}], "sinks[0].name: missing: every sink needs a unique name"),
        ([{"name": " ", "type": "file"}], "sinks[0].name: expected a non-empty string, got ' '"),
        ([{"name": 3, "type": "file"}], "sinks[0].name: expected a non-empty string, got 3"),
        (
            [{"name": "a", "type": "test"}, {"name": "b"}],
            "sinks[1].type: missing: set the sink type, e.g. 'file', 'webhook' or 'test'",
        ),
        (
            [{"name": "a", "type": 3}],
            "sinks[0].type: expected a non-empty string, got 3",
        ),
        (
            [{"name": "a", "type": ""}],
            "sinks[0].type: expected a non-empty string, got ''",
        ),
        (
            [
                {"name": "a", "type": "file"},
                {"name": "b", "type": "test"},
                {"name": "a", "type": "test"},
            ],
            "sinks[2].name: duplicate sink name 'a' (also used by sinks[0]);"
            " sink names must be unique",
        ),
        (
            # Names and types of every entry are checked before any entry's options.
            [{"name": "a", "type": "test", "fail_rate": "x"}, {"type": "test"}],
            "sinks[1].name: missing: every sink needs a unique name",
        ),
        (
            [{"name": 2**70, "type": "test"}],
            "sinks[0].name: expected a non-empty string, got a very large integer",
        ),
    ],
)
def test_sink_entries_without_a_usable_name_or_type_are_named_by_key_path(
    sinks: Any, message: str
) -> None:
    for check in (lambda: SinkManager(_hub(), sinks), lambda: validate_sink_configs(sinks)):
        with pytest.raises(SinkConfigError) as caught:
            check()
        assert str(caught.value) == message


def test_a_bad_webhook_secret_is_refused_without_echoing_it() -> None:
    secret = "whsec_not*base64*at*all"
    with pytest.raises(SinkConfigError) as caught:
        SinkManager(_hub(), [{"name": "w", "type": "webhook", "url": "http://x", "secret": secret}])
    assert "option 'secret' is not valid" in str(caught.value)
    assert "not*base64" not in str(caught.value)
    with pytest.raises(SinkConfigError) as caught:
        SinkManager(_hub(), [{"name": "w", "type": "webhook", "url": "http://x", "secret": 12345}])
    assert "12345" not in str(caught.value)


def test_builtin_sinks_are_registered_once_through_the_plugin_path() -> None:
    pm = create_plugin_manager()
    builtins = [
        p for p in pm.get_plugins() if getattr(p, "__name__", "") == "bezant_trio.sinks.builtin"
    ]
    assert len(builtins) == 1
    types = sink_types(pm)
    assert {"file", "webhook", "test"} <= set(types)
    assert types["test"] is TestSink


def test_builtin_sinks_found_through_their_entry_point_are_not_registered_again(
    tmp_path: Path, monkeypatch
) -> None:
    # What an installed bezant-trio declares: [project.entry-points.bezant_trio] builtin = ...
    dist = tmp_path / "bezant_trio_shadow-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: bezant-trio-shadow\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text("[bezant_trio]\nbuiltin = bezant_trio.sinks.builtin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = create_plugin_manager()
    from bezant_trio.sinks import builtin

    assert pm.get_plugin("builtin") is builtin
    assert [p for p in pm.get_plugins() if p is builtin] == [builtin]
    assert any(plugin is builtin for plugin, _dist in pm.list_plugin_distinfo())
    assert sink_types(pm)["file"].type_name == "file"


class _FileClash:
    """A local plugin that claims the built-in type name ``file``."""

    class Impostor:
        type_name = "file"

        async def deliver(self, batch: list[Any]) -> None:
            raise AssertionError("never used")

    @staticmethod
    @hookimpl
    def register_sink_types() -> list[type]:
        return [_FileClash.Impostor]


def test_duplicate_type_name_from_a_local_plugin_names_the_plugin() -> None:
    pm = plugin_manager()
    pm.register(_FileClash, name="local-clash")
    try:
        with pytest.raises(SinkConfigError) as caught:
            SinkManager(_hub(), [], pm=pm)
    finally:
        pm.unregister(name="local-clash")
    text = str(caught.value)
    assert "sink type 'file' is declared twice" in text
    assert "'builtin'" in text and "'local-clash'" in text
    SinkManager(_hub(), [], pm=pm)  # unregistered: all good again


class _Broken:
    @staticmethod
    @hookimpl
    def register_sink_types() -> list[type]:
        raise RuntimeError("cannot find libfoo")


def test_plugin_whose_hook_raises_is_named(bezant_plugin_manager) -> None:
    bezant_plugin_manager.register(_Broken, name="broken-plugin")
    with pytest.raises(SinkConfigError) as caught:
        SinkManager(_hub(), [], pm=bezant_plugin_manager)
    assert str(caught.value) == (
        "sink plugin 'broken-plugin': register_sink_types() failed:"
        " RuntimeError: cannot find libfoo"
    )


def test_class_without_type_name_is_refused(bezant_plugin_manager) -> None:
    class Nameless:
        async def deliver(self, batch: list[Any]) -> None: ...

    class Plugin:
        @staticmethod
        @hookimpl
        def register_sink_types() -> list[type]:
            return [Nameless]

    bezant_plugin_manager.register(Plugin, name="nameless-plugin")
    with pytest.raises(SinkConfigError, match=r"'nameless-plugin': .*Nameless needs a non-empty"):
        SinkManager(_hub(), [], pm=bezant_plugin_manager)


def test_plugin_that_fails_to_import_is_named(tmp_path: Path, monkeypatch) -> None:
    # A real (if tiny) installed distribution whose entry point's module raises on import.
    dist = tmp_path / "bezant_trio_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: bezant-trio-broken\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text("[bezant_trio]\nbroken = bezant_trio_broken_mod\n")
    (tmp_path / "bezant_trio_broken_mod.py").write_text(
        textwrap.dedent(
            """
            import bezant_trio_dependency_that_is_not_installed
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SinkConfigError) as caught:
            create_plugin_manager()
    finally:
        sys.modules.pop("bezant_trio_broken_mod", None)
    text = str(caught.value)
    assert text.startswith("sink plugin 'broken' (bezant_trio_broken_mod, from bezant-trio-broken)")
    assert "failed to load: ModuleNotFoundError" in text
    assert "bezant_trio_dependency_that_is_not_installed" in text


class _Upper:
    """A local sink type, registered the way a third-party plugin is."""

    class UpperSink:
        type_name = "upper"
        options = {"prefix": Option(str, default="")}

        def __init__(self, name: str, *, prefix: str) -> None:
            self.name = name
            self.prefix = prefix
            self.lines: list[str] = []

        async def deliver(self, batch: list[Any]) -> None:
            self.lines.extend(self.prefix + e.json.decode().upper() for e in batch)

        async def aclose(self) -> None:
            pass

    @staticmethod
    @hookimpl
    def register_sink_types() -> list[type]:
        return [_Upper.UpperSink]


async def test_a_local_plugin_sink_type_receives_events(
    bezant_plugin_manager, bezant_sink_manager_factory
) -> None:
    bezant_plugin_manager.register(_Upper, name="upper-plugin")
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory(
            [{"name": "u", "type": "upper", "prefix": "> "}], pm=bezant_plugin_manager
        )
        manager.hub.publish("orders", {"side": "buy"})
        await manager.wait_delivered("u", 1)
    (line,) = manager.sinks["u"].lines
    assert line.startswith('> {"CURSOR":1,"TOPIC":"ORDERS",')
    assert line.endswith('"PAYLOAD":{"SIDE":"BUY"}}')


class _Lifecycle:
    calls: list[tuple[str, Any]] = []

    @staticmethod
    @hookimpl
    def startup(daemon: Any) -> None:
        _Lifecycle.calls.append(("startup", daemon))

    @staticmethod
    @hookimpl
    def shutdown(daemon: Any) -> None:
        _Lifecycle.calls.append(("shutdown", daemon))


class _FailingLifecycle:
    @staticmethod
    @hookimpl
    def startup(daemon: Any) -> None:
        raise OSError("port in use")

    @staticmethod
    @hookimpl
    def shutdown(daemon: Any) -> None:
        raise OSError("already gone")


def test_lifecycle_hooks_are_called_with_the_daemon(bezant_plugin_manager, caplog) -> None:
    _Lifecycle.calls.clear()
    bezant_plugin_manager.register(_Lifecycle, name="lifecycle")
    manager = SinkManager(_hub(), [], pm=bezant_plugin_manager)
    daemon = object()
    manager.run_startup_hooks(daemon=daemon)
    bezant_plugin_manager.register(_FailingLifecycle, name="failing")
    manager.run_shutdown_hooks(daemon=daemon)  # the failing one must not skip the other
    assert _Lifecycle.calls == [("startup", daemon), ("shutdown", daemon)]
    assert "sink plugin 'failing': shutdown() failed: OSError: already gone" in caplog.text
    with pytest.raises(SinkConfigError, match="sink plugin 'failing': startup\\(\\) failed"):
        manager.run_startup_hooks(daemon=daemon)


def test_hookimpl_is_reexported_from_the_package() -> None:
    import bezant_trio
    from bezant_trio.sinks.hookspecs import hookimpl as original

    assert bezant_trio.hookimpl is original
    assert "hookimpl" in bezant_trio.__all__
