"""Sink plugins: the pluggy manager, entry-point loading and the hooks it calls.

Plugins (the built-in sinks included, through :mod:`bezant_trio.sinks.builtin`)
are found in the ``bezant_trio`` entry-point group by one
``pluggy.PluginManager``. Their ``register_sink_types`` hooks name the sink
*types* (:func:`sink_types`); ``startup`` and ``shutdown`` are called one
implementation at a time, so one failing plugin neither hides its name nor
skips the others (:func:`call_lifecycle_hook`).

Owns no config and no delivery: it never reads ``sinks:`` entries, the hub or
a sink instance.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import pluggy

from bezant_trio.sinks import builtin, hookspecs
from bezant_trio.sinks.interface import SinkConfigError, normalise_option_specs
from bezant_trio.util import describe

__all__ = [
    "ENTRY_POINT_GROUP",
    "call_lifecycle_hook",
    "create_plugin_manager",
    "plugin_manager",
    "sink_types",
]

log = logging.getLogger(__name__)

#: The entry-point group plugins (and the built-in sinks) are published under.
ENTRY_POINT_GROUP = hookspecs.hookimpl.project_name

_cached_pm: pluggy.PluginManager | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use, then cached).

    Tests may ``register`` local plugin objects on it and must ``unregister``
    them afterwards, or use :func:`create_plugin_manager` for a private one.
    Raises :class:`SinkConfigError` if a plugin cannot be loaded.
    """
    global _cached_pm
    if _cached_pm is None:
        _cached_pm = create_plugin_manager()
    return _cached_pm


def create_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with every installed plugin and the built-in sinks.

    Raises :class:`SinkConfigError` naming the entry point that failed to load.
    """
    pm = pluggy.PluginManager(hookspecs.hookimpl.project_name)
    pm.add_hookspecs(hookspecs)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        raise SinkConfigError(
            f"sink plugin {_unloaded_entry_point(pm)} failed to load: {describe(exc)};"
            " fix or uninstall it"
        ) from exc
    # A source tree used without `pip install` has no entry points: the
    # built-ins must still be there, once.
    if not pm.is_registered(builtin):
        name = "builtin" if pm.get_plugin("builtin") is None else builtin.__name__
        pm.register(builtin, name=name)
    return pm


def _unloaded_entry_point(pm: pluggy.PluginManager) -> str:
    """The first entry point of the group pluggy has not registered: the one that failed.

    pluggy walks distributions in this same order and stops at the failure.
    """
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.is_blocked(ep.name):
                continue
            if pm.get_plugin(ep.name) is None:
                return f"{ep.name!r} ({ep.value}, from {dist.metadata['Name']})"
    return "(unknown entry point)"


def sink_types(pm: pluggy.PluginManager) -> dict[str, type]:
    """Every registered sink class by ``type_name``.

    Raises :class:`SinkConfigError` naming the plugin whose hook failed, whose
    class is malformed, or that declares a type name another plugin has.
    """
    found: dict[str, tuple[type, str]] = {}
    # pluggy calls implementations last-registered first; registration order
    # reads better in messages ("builtin" before the plugin that collides).
    for impl in pm.hook.register_sink_types.get_hookimpls():
        plugin = impl.plugin_name
        try:
            classes = impl.function()
        except Exception as exc:
            raise SinkConfigError(
                f"sink plugin {plugin!r}: register_sink_types() failed: {describe(exc)}"
            ) from exc
        for cls in classes or ():
            type_name = getattr(cls, "type_name", None)
            label = getattr(cls, "__qualname__", repr(cls))
            if not isinstance(type_name, str) or not type_name.strip():
                raise SinkConfigError(
                    f"sink plugin {plugin!r}: {label} needs a non-empty string `type_name`"
                )
            if not callable(getattr(cls, "deliver", None)):
                raise SinkConfigError(
                    f"sink plugin {plugin!r}: {label} ({type_name!r}) has no deliver() method"
                )
            normalise_option_specs(f"sink plugin {plugin!r}: {label}", getattr(cls, "options", {}))
            if type_name in found and found[type_name][0] is not cls:
                other_cls, other = found[type_name]
                raise SinkConfigError(
                    f"sink type {type_name!r} is declared twice: by plugin {other!r}"
                    f" ({other_cls.__qualname__}) and by plugin {plugin!r} ({label});"
                    " uninstall one or rename its type_name"
                )
            found[type_name] = (cls, plugin)
    return {name: cls for name, (cls, _plugin) in found.items()}


def call_lifecycle_hook(
    pm: pluggy.PluginManager, hook_name: str, *, strict: bool, **kwargs: Any
) -> None:
    """Call every implementation of a lifecycle hook, one at a time.

    One raising implementation must not skip the others' shutdown, and an
    error must name its plugin, so implementations are called individually.
    With ``strict`` the first failure raises :class:`SinkConfigError`; without,
    each failure is logged and the rest are still called.
    """
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers make no sense around a notification
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:
            message = f"sink plugin {impl.plugin_name!r}: {hook_name}() failed: {describe(exc)}"
            if strict:
                raise SinkConfigError(message) from exc
            log.error("%s", message)
