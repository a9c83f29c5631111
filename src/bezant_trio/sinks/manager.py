"""The sink manager: plugin discovery, config validation and one delivery task per sink.

Plugins (the built-in sinks included) are found through the ``bezant_trio``
entry-point group by one ``pluggy.PluginManager``; their
``register_sink_types`` hooks name the sink *types*. ``sinks:`` entries in the
config make sink *instances* (the contract a sink class follows is in
``bezant_trio.sinks.interface``), each validated when :class:`SinkManager` is
built (or reloaded) and driven by its own task:

- it reads the hub like a REST poller, from its own per-topic checkpoint
  (the log's ``checkpoints`` table, or memory when the log is off);
- it waits for new events with ``hub.wait`` (one small watcher per matching
  topic), never by polling reads; new matching topics are picked up as they
  appear (on ``hub.topics_changed``);
- it hands ``deliver`` one topic's events at a time, in cursor order, and
  advances the checkpoint only once ``deliver`` returned;
- a failed delivery is retried (same batch) with exponential backoff and
  jitter, so delivery is at-least-once;
- a checkpoint older than what the hub still holds yields a synthetic ``gap``
  event (reason ``sink_lagged``) and the sink goes on from the head.

Delivery is never a hook fan-out: a sink that fails or blocks stalls only its
own task; ingestion, the HTTP surface and the other sinks do not wait on it.

This module reads the hub and the log's checkpoint table; it never publishes,
never touches the gateway and never imports ``http`` or ``cpapi``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import logging
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pluggy
import trio

from bezant_trio.model import Event, GapReason, format_ts
from bezant_trio.sinks import builtin, hookspecs
from bezant_trio.sinks.interface import (
    DeliveryError,
    Option,
    SinkConfigError,
    SinkDisabled,
    normalise_option_specs,
    validate_options,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_RETRY",
    "ENTRY_POINT_GROUP",
    "DeliveryError",
    "SinkConfigError",
    "SinkDisabled",
    "SinkManager",
    "SinkSpec",
    "create_plugin_manager",
    "plugin_manager",
    "sink_types",
]

log = logging.getLogger(__name__)

#: The entry-point group plugins (and the built-in sinks) are published under.
ENTRY_POINT_GROUP = hookspecs.hookimpl.project_name
#: Events per ``deliver`` call, at most: whatever is ready, up to this. Each
#: call is a POST or an fsync for the built-in sinks, so a busy topic costs 10x
#: fewer of them than at 100 (bench/ANALYSIS.md, P11); an idle one still
#: delivers each event at once.
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
#: Seconds: the first retry delay, and the cap of the exponential backoff.
DEFAULT_RETRY = (1.0, 60.0)
#: Checkpoints reach the log at most this long after a delivery (and at shutdown).
CHECKPOINT_INTERVAL = 0.5
#: How long a sink stopped by a reload may finish the batch it is delivering.
RELOAD_GRACE = 5.0
#: Upper bound on a sink's own ``aclose()``.
SINK_CLOSE_TIMEOUT = 5.0
#: What ``aclose`` keeps of its time, at most, for storing checkpoints and closing.
CHECKPOINT_RESERVE = 1.0
#: When ``run`` is cancelled without ``aclose``: bound on the final checkpoint flush.
FINAL_FLUSH_TIMEOUT = 5.0

_COMMON_KEYS = ("name", "type", "topics", "batch_size", "retry")

# ------------------------------------------------------------------ plugins

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
            f"sink plugin {_unloaded_entry_point(pm)} failed to load: {_describe(exc)};"
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
                f"sink plugin {plugin!r}: register_sink_types() failed: {_describe(exc)}"
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


def _call_lifecycle(
    pm: pluggy.PluginManager, hook_name: str, *, strict: bool, **kwargs: Any
) -> None:
    """Call every implementation of a lifecycle hook, one at a time.

    One raising implementation must not skip the others' shutdown, and an
    error must name its plugin, so implementations are called individually.
    """
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            continue  # wrappers make no sense around a notification
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:
            message = f"sink plugin {impl.plugin_name!r}: {hook_name}() failed: {_describe(exc)}"
            if strict:
                raise SinkConfigError(message) from exc
            log.error("%s", message)


# ------------------------------------------------------------------ config


@dataclass(frozen=True)
class SinkSpec:
    """One validated ``sinks:`` entry."""

    name: str
    type_name: str
    topics: tuple[str, ...]
    batch_size: int
    retry_min: float
    retry_max: float
    #: The type's own options, typed and defaulted (may hold secrets: never log it).
    options: Mapping[str, Any]
    #: The entry as given, to tell a changed sink from an unchanged one on reload.
    source: Any

    def matcher(self) -> Callable[[str], bool]:
        """A predicate telling whether a topic matches one of the globs."""
        if self.topics == ("*",):
            return lambda topic: True
        pattern = re.compile("|".join(fnmatch.translate(glob) for glob in self.topics))
        return lambda topic: pattern.match(topic) is not None


def _parse_specs(configs: Sequence[Mapping[str, Any]], types: Mapping[str, type]) -> list[SinkSpec]:
    if isinstance(configs, str | bytes) or not isinstance(configs, Sequence):
        raise SinkConfigError(f"sinks: expected a list of sink mappings, got {_kind(configs)}")
    specs: list[SinkSpec] = []
    seen: set[str] = set()
    for index, config in enumerate(configs):
        spec = _parse_spec(index, config, types)
        if spec.name in seen:
            raise SinkConfigError(
                f"sink {spec.name!r}: the name is used twice; sink names must be unique"
            )
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _parse_spec(index: int, config: Any, types: Mapping[str, type]) -> SinkSpec:
    if not isinstance(config, Mapping):
        raise SinkConfigError(f"sinks[{index}]: expected a mapping with name and type")
    name = config.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SinkConfigError(f"sinks[{index}]: `name` must be a non-empty string")
    where = f"sink {name!r}"
    type_name = config.get("type")
    if not isinstance(type_name, str) or not type_name.strip():
        raise SinkConfigError(f"{where}: `type` must be a non-empty string (e.g. file, webhook)")
    cls = types.get(type_name)
    if cls is None:
        close = difflib.get_close_matches(type_name, list(types), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(sorted(types)) or "none"
        raise SinkConfigError(
            f"{where}: unknown sink type {type_name!r} (installed: {known}){hint}"
        )
    where = f"sink {name!r} (type {type_name})"
    topics = _parse_topics(where, config.get("topics", ["*"]))
    batch_size = _parse_batch_size(where, config.get("batch_size", DEFAULT_BATCH_SIZE))
    retry_min, retry_max = _parse_retry(where, config.get("retry"))
    specs = normalise_option_specs(where, getattr(cls, "options", {}))
    own = {k: v for k, v in config.items() if k not in _COMMON_KEYS}
    options = validate_options(where, specs, own)
    return SinkSpec(
        name=name,
        type_name=type_name,
        topics=topics,
        batch_size=batch_size,
        retry_min=retry_min,
        retry_max=retry_max,
        options=options,
        source=_plain(config),
    )


def _parse_topics(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ("*",)
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise SinkConfigError(
            f"{where}: `topics` must be a list of topic names or globs"
            f' (e.g. [orders, "marketdata:*"]), got {_kind(value)}'
        )
    if not value:
        raise SinkConfigError(f"{where}: `topics` is empty; leave it out to get every topic")
    for glob in value:
        if not isinstance(glob, str) or not glob.strip() or glob != glob.strip():
            raise SinkConfigError(
                f"{where}: `topics` entries must be non-empty names without surrounding"
                f" spaces, got {glob!r}"
            )
        try:
            re.compile(fnmatch.translate(glob))
        except re.error as exc:
            raise SinkConfigError(f"{where}: `topics` glob {glob!r} is invalid ({exc})") from None
    return tuple(value)


def _parse_batch_size(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise SinkConfigError(
            f"{where}: `batch_size` must be an integer from 1 to {MAX_BATCH_SIZE}, got {value!r}"
        )
    return value


def _parse_retry(where: str, value: Any) -> tuple[float, float]:
    if value is None:
        return DEFAULT_RETRY
    if not isinstance(value, Mapping):
        raise SinkConfigError(f"{where}: `retry` must be a mapping like {{min: 1, max: 60}}")
    values = validate_options(
        f"{where}: retry",
        {"min": Option(float, default=DEFAULT_RETRY[0]), "max": Option(float, default=None)},
        value,
    )
    low = values["min"]
    high = values["max"] if values["max"] is not None else max(DEFAULT_RETRY[1], low)
    if not (math.isfinite(low) and low > 0):
        raise SinkConfigError(f"{where}: `retry.min` must be more than 0 seconds, got {low:g}")
    if not (math.isfinite(high) and high >= low):
        raise SinkConfigError(
            f"{where}: `retry.max` must be at least retry.min ({low:g}), got {high:g}"
        )
    return low, high


def _instantiate(spec: SinkSpec, types: Mapping[str, type]) -> Any:
    cls = types[spec.type_name]
    try:
        return cls(spec.name, **spec.options)
    except SinkConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise SinkConfigError(
            f"sink {spec.name!r} (type {spec.type_name}): {_first_line(exc)}"
        ) from None


# ------------------------------------------------------------------ delivery


class _SinkRunner:
    """The delivery task of one sink instance, and its bookkeeping for status()."""

    def __init__(
        self,
        spec: SinkSpec,
        sink: Any,
        hub: Any,
        checkpoints: dict[str, int],
        on_progress: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.sink = sink
        self.hub = hub
        #: topic -> last cursor ``deliver`` acknowledged.
        self.checkpoints = checkpoints
        #: Checkpoints advanced since the last flush to the log.
        self.dirty: dict[str, int] = {}
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_delivered_at: str | None = None
        self.state = "starting"
        self.started = False
        self.stopped = trio.Event()
        #: Set (then replaced) after every delivery, failure or state change.
        self.changed = trio.Event()
        self._on_progress = on_progress
        self._matches = spec.matcher()
        self._watched: set[str] = set()
        self._wake = trio.Event()
        self._stop = trio.Event()
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._random = random.Random()

    # -------------------------------------------------------------- control

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._discover()
                    nursery.start_soon(self._discover_loop)
                    self.state = "running"
                    task_status.started()
                    await self._deliver_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if self.state != "disabled":
                self.state = "stopped"
            self.stopped.set()
            self._notify()

    def request_stop(self) -> None:
        """Stop after the delivery in flight (if any); pending retries are dropped."""
        self._stop.set()
        self._wake.set()

    def cancel(self) -> None:
        """Stop now, abandoning the delivery in flight (its checkpoint stays put)."""
        self._stop.set()
        self._scope.cancel()

    def take_dirty(self) -> dict[str, int]:
        dirty, self.dirty = self.dirty, {}
        return dirty

    def restore_dirty(self, dirty: Mapping[str, int]) -> None:
        for topic, cursor in dirty.items():
            self.dirty.setdefault(topic, cursor)  # a newer value wins

    # -------------------------------------------------------------- status

    def topics(self) -> list[str]:
        return sorted(self._watched | {t for t in self.checkpoints if self._matches(t)})

    def lag(self) -> int:
        return sum(max(0, self.hub.head(t) - self.checkpoints.get(t, 0)) for t in self._watched)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.spec.type_name,
            "topics": list(self.spec.topics),
            "checkpoints": {t: self.checkpoints.get(t, 0) for t in self.topics()},
            "lag": self.lag(),
            "delivered": self.delivered,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_delivered_at": self.last_delivered_at,
            "state": self.state,
        }
        extra = getattr(self.sink, "status", None)
        if callable(extra):
            try:
                out["details"] = extra()
            except Exception as exc:  # a plugin's status bug must not break /_status
                out["details"] = {"error": _describe(exc)}
        return out

    # -------------------------------------------------------------- topics

    def _discover(self) -> None:
        """Start a watcher for every matching topic not watched yet."""
        assert self._nursery is not None
        new = False
        for topic in self.hub.topics():
            if topic not in self._watched and self._matches(topic):
                self._watched.add(topic)
                # The head is taken now, not when the watcher first runs: an
                # event published in between must still wake the loop.
                self._nursery.start_soon(self._watch, topic, self.hub.head(topic))
                new = True
        if new:
            self._wake.set()

    async def _discover_loop(self) -> None:
        literal = not any(ch in glob for glob in self.spec.topics for ch in "*?[")
        while True:
            # Take the event before listing, so a topic born in between is not missed.
            announced = self.hub.topics_changed
            self._discover()
            if self.hub.closing or (literal and len(self._watched) == len(set(self.spec.topics))):
                return  # nothing new can match any more
            await announced.wait()

    async def _watch(self, topic: str, seen: int) -> None:
        """Wake the delivery loop whenever ``topic``'s head moves past ``seen``."""
        while True:
            if self.hub.closing:
                # hub.wait returns at once while closing: do not spin.
                await trio.sleep_forever()
            # A batch-sized limit lets the hub pace wake-ups of a hot topic
            # (at most one per WAKE_INTERVAL), so a burst is delivered in
            # batches rather than one call per event; a quiet topic wakes at once.
            await self.hub.wait(topic, seen, math.inf, limit=self.spec.batch_size)
            head = self.hub.head(topic)
            if head != seen:
                seen = head
                self._wake.set()

    # -------------------------------------------------------------- delivery

    async def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            # Re-armed before the pass: a head that moves during the pass sets it.
            wake = self._wake = trio.Event()
            progressed = False
            for topic in sorted(self._watched):
                if self._stop.is_set() or self.state == "disabled":
                    return
                if await self._step(topic):
                    progressed = True
            if self.state == "disabled":
                return
            if not progressed:
                await wake.wait()

    async def _step(self, topic: str) -> bool:
        """Deliver at most one batch of ``topic``; True if the checkpoint moved."""
        since = self.checkpoints.get(topic, 0)
        if self.hub.head(topic) == since:
            return False
        attempt = 0
        while True:
            try:
                read = await self.hub.read(topic, since, self.spec.batch_size)
                break
            except Exception as exc:  # a log read error: back off like a failed delivery
                self._record_failure(exc)
                if not await self._pause(self._delay(attempt, None)):
                    return False
                attempt += 1
        if read.expired:
            batch = [self._lagged_gap(topic, since, read.head_cursor)]
            upto = read.head_cursor
        elif read.events:
            batch = read.events
            upto = read.events[-1].cursor
        else:
            return False
        if not await self._deliver(batch):
            return False
        self.checkpoints[topic] = upto
        self.dirty[topic] = upto
        self._on_progress()
        return True

    def _lagged_gap(self, topic: str, since: int, head: int) -> Event:
        log.warning(
            "sink %r is behind what the hub keeps for %r (checkpoint %d); resuming at %d",
            self.spec.name,
            topic,
            since,
            head,
        )
        payload = orjson.dumps(
            {
                "reason": str(GapReason.SINK_LAGGED),
                "new_reset_epoch": self.hub.reset_epoch,
                "skipped_from": since,
                "resumed_at": head,
            }
        )
        return Event.build(topic, head, format_ts(), self.hub.reset_epoch, payload)

    async def _deliver(self, batch: list[Event]) -> bool:
        """Deliver ``batch`` until it is taken; False if stopped or disabled first."""
        attempt = 0
        while True:
            try:
                await self.sink.deliver(batch)
            except SinkDisabled as exc:
                self.failures += 1
                self.last_error = _describe(exc)
                self.state = "disabled"
                log.error("sink %r disabled: %s", self.spec.name, self.last_error)
                self._notify()
                return False
            except Exception as exc:
                self._record_failure(exc, batch)
                retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
                if not await self._pause(self._delay(attempt, retry_after)):
                    return False
                attempt += 1
                continue
            self.delivered += len(batch)
            self.last_delivered_at = format_ts()
            self._notify()
            if attempt:
                log.info("sink %r delivers again", self.spec.name)
            self.state = "running"
            return True

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _record_failure(self, exc: BaseException, batch: list[Event] | None = None) -> None:
        self.failures += 1
        self.last_error = _describe(exc)
        self.state = "retrying"
        self._notify()
        if batch:
            log.warning(
                "sink %r: delivering %s %d-%d failed, will retry: %s",
                self.spec.name,
                batch[0].topic,
                batch[0].cursor,
                batch[-1].cursor,
                self.last_error,
            )
        else:
            log.warning(
                "sink %r: reading the hub failed, will retry: %s", self.spec.name, self.last_error
            )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        low, high = self.spec.retry_min, self.spec.retry_max
        if retry_after is not None:
            return min(max(retry_after, 0.0), high)
        ceiling = min(high, low * 2.0 ** min(attempt, 62))
        # Jitter spreads retries of many sinks hitting one receiver; never below min.
        return max(low, self._random.uniform(ceiling / 2, ceiling))

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` unless asked to stop; True to go on."""
        with trio.move_on_after(delay):
            await self._stop.wait()
        return not self._stop.is_set()


# ------------------------------------------------------------------ manager


def validate_sink_configs(
    sink_configs: Sequence[Mapping[str, Any]], *, pm: pluggy.PluginManager | None = None
) -> None:
    """Check ``sinks:`` exactly as start-up does (types, options, names); raises SinkConfigError.

    Builds each sink (constructors do no I/O) and drops it: ``check-config`` uses
    this so it accepts exactly what ``run`` accepts.
    """
    types = sink_types(pm if pm is not None else plugin_manager())
    for spec in _parse_specs(sink_configs, types):
        _instantiate(spec, types)


class SinkManager:
    """Every configured sink instance and its delivery task.

    Built from the ``sinks:`` config (validated here, raising
    :class:`SinkConfigError`), started with ``await nursery.start(manager.run)``,
    stopped with :meth:`aclose`. ``sinks`` maps each name to its instance.
    """

    def __init__(
        self,
        hub: Any,
        sink_configs: Sequence[Mapping[str, Any]],
        *,
        pm: pluggy.PluginManager | None = None,
    ) -> None:
        self.hub = hub
        self.pm = pm if pm is not None else plugin_manager()
        self._types = sink_types(self.pm)
        specs = _parse_specs(sink_configs, self._types)
        instances = [_instantiate(spec, self._types) for spec in specs]
        #: Checkpoints when the log is off (they outlive reloads, not the process).
        self._memory_checkpoints: dict[str, dict[str, int]] = {}
        self._runners: dict[str, _SinkRunner] = {
            spec.name: self._new_runner(spec, sink)
            for spec, sink in zip(specs, instances, strict=True)
        }
        self._nursery: trio.Nursery | None = None
        self._progress = trio.Event()
        self._flush_lock = trio.Lock()
        self._reload_lock = trio.Lock()
        self._finishing = False
        self._closed = trio.Event()

    @property
    def sinks(self) -> dict[str, Any]:
        """Sink name -> sink instance, in config order."""
        return {name: runner.sink for name, runner in self._runners.items()}

    # ---------------------------------------------------------------- run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load checkpoints, start every sink's task; started once all run; until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for runner in list(self._runners.values()):
                    await self._start(runner)
                nursery.start_soon(self._persist_loop)
                task_status.started()
                await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if not self._closed.is_set():
                # Cancelled without aclose(): still keep what was acknowledged.
                now = trio.current_time()
                await self._finish(now, now + FINAL_FLUSH_TIMEOUT)

    async def _start(self, runner: _SinkRunner) -> None:
        assert self._nursery is not None
        if self.hub.event_log is not None:
            stored = await trio.to_thread.run_sync(
                self.hub.event_log.load_checkpoints, runner.spec.name
            )
            for topic, cursor in stored.items():
                runner.checkpoints.setdefault(topic, cursor)
        await self._nursery.start(runner.run)

    def _new_runner(
        self, spec: SinkSpec, sink: Any, checkpoints: dict[str, int] | None = None
    ) -> _SinkRunner:
        if checkpoints is None:
            checkpoints = {}
        if self.hub.event_log is None:
            stored = self._memory_checkpoints.setdefault(spec.name, {})
            stored.update(checkpoints)
            checkpoints = stored  # shared: memory "persistence" is immediate
        return _SinkRunner(spec, sink, self.hub, checkpoints, self._note_progress)

    def _note_progress(self) -> None:
        self._progress.set()

    async def _persist_loop(self) -> None:
        while True:
            await self._progress.wait()
            await trio.sleep(CHECKPOINT_INTERVAL)  # batch the writes of a busy sink
            self._progress = trio.Event()
            await self._flush(list(self._runners.values()))

    async def _flush(self, runners: Sequence[_SinkRunner]) -> None:
        """Write advanced checkpoints to the log (no-op when the log is off)."""
        elog = self.hub.event_log
        async with self._flush_lock:
            for runner in runners:
                dirty = runner.take_dirty()
                if not dirty or elog is None:
                    continue
                try:
                    await trio.to_thread.run_sync(elog.store_checkpoints, runner.spec.name, dirty)
                except Exception as exc:  # retried at the next flush; delivery goes on
                    runner.restore_dirty(dirty)
                    log.warning(
                        "storing checkpoints of sink %r failed, will retry: %s",
                        runner.spec.name,
                        _describe(exc),
                    )

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, dict[str, Any]]:
        """``_status.sinks``: per sink name, its type, topics, checkpoints, lag, counters, state."""
        return {name: runner.status() for name, runner in self._runners.items()}

    async def wait_delivered(self, name: str, count: int) -> None:
        """Wait until sink ``name`` has acknowledged ``count`` events (tests, demos).

        Counts since this manager started the sink (a reload that changes it
        starts again from 0); bound it with ``trio.fail_after``.
        """
        await self.wait_status(name, lambda status: status["delivered"] >= count)

    async def wait_status(self, name: str, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Wait until ``predicate(status()[name])`` holds; re-checked on every change."""
        while True:
            runner = self._runners[name]
            changed = runner.changed
            if predicate(runner.status()):
                return
            await changed.wait()

    # ---------------------------------------------------------------- plugins

    def run_startup_hooks(self, *, daemon: Any) -> None:
        """Call every plugin's ``startup(daemon=...)``; SinkConfigError names a failing one."""
        _call_lifecycle(self.pm, "startup", strict=True, daemon=daemon)

    def run_shutdown_hooks(self, *, daemon: Any) -> None:
        """Call every plugin's ``shutdown(daemon=...)``; failures are logged, all are called."""
        _call_lifecycle(self.pm, "shutdown", strict=False, daemon=daemon)

    # ---------------------------------------------------------------- SIGHUP

    def reopen(self) -> None:
        """Ask every sink with a ``reopen()`` (the file sink) to reopen its file."""
        for name, runner in self._runners.items():
            reopen = getattr(runner.sink, "reopen", None)
            if not callable(reopen):
                continue
            try:
                reopen()
            except Exception as exc:
                log.error("sink %r: reopen() failed: %s", name, _describe(exc))

    async def reload(self, sink_configs: Sequence[Mapping[str, Any]]) -> None:
        """Add, remove and replace sinks live; on a bad config raise and keep the old set.

        A sink whose entry is unchanged keeps running untouched. A changed one
        finishes its batch in flight, then restarts with the new options from
        the same checkpoints. A removed one is stopped and its checkpoints are
        deleted (a sink added later under that name starts from the beginning).
        """
        async with self._reload_lock:
            if self._finishing:
                raise SinkConfigError("sinks: cannot reload, the daemon is shutting down")
            specs = _parse_specs(sink_configs, self._types)
            old = self._runners
            fresh = {
                spec.name: _instantiate(spec, self._types)
                for spec in specs
                if spec.name not in old or old[spec.name].spec.source != spec.source
            }
            wanted = {spec.name for spec in specs}
            retiring = [r for n, r in old.items() if n not in wanted or n in fresh]
            await self._retire(retiring, trio.current_time() + RELOAD_GRACE)
            elog = self.hub.event_log
            for runner in retiring:
                if runner.spec.name in wanted:
                    continue
                self._memory_checkpoints.pop(runner.spec.name, None)
                if elog is not None:
                    await trio.to_thread.run_sync(elog.delete_checkpoints, runner.spec.name)
            runners: dict[str, _SinkRunner] = {}
            for spec in specs:
                if spec.name not in fresh:
                    runners[spec.name] = old[spec.name]
                    continue
                previous = old.get(spec.name)
                carried = dict(previous.checkpoints) if previous is not None else None
                runners[spec.name] = self._new_runner(spec, fresh[spec.name], carried)
            self._runners = runners
            if self._nursery is not None:
                for name in fresh:
                    await self._start(runners[name])
            log.info(
                "sinks reloaded: %d started, %d stopped, %d unchanged",
                len(fresh),
                len(retiring),
                len(specs) - len(fresh),
            )

    async def _retire(self, runners: Sequence[_SinkRunner], finish_by: float) -> None:
        """Stop ``runners`` (batches in flight may run until ``finish_by``), flush, close them."""
        if not runners:
            return
        for runner in runners:
            runner.request_stop()
        with trio.move_on_at(finish_by):
            for runner in runners:
                if runner.started:
                    await runner.stopped.wait()
        for runner in runners:
            runner.cancel()
        with trio.move_on_after(SINK_CLOSE_TIMEOUT):
            for runner in runners:
                if runner.started:
                    await runner.stopped.wait()
        await self._flush(runners)
        for runner in runners:
            await _close_sink(runner.spec.name, runner.sink)

    # ---------------------------------------------------------------- stop

    async def aclose(self, deadline: float, *, finish_by: float | None = None) -> None:
        """Graceful stop, over by ``deadline`` (a ``trio.current_time()``).

        Batches in flight may finish until ``finish_by``; then every sink is
        cancelled, its checkpoints are stored and it is closed, all by
        ``deadline``, even while the caller is being cancelled. By default
        ``finish_by`` leaves a quarter of the time (at most
        ``CHECKPOINT_RESERVE``) for the checkpoints. Idempotent; ``run``
        returns once this is done.
        """
        if finish_by is None:
            left = max(0.0, deadline - trio.current_time())
            finish_by = deadline - min(CHECKPOINT_RESERVE, left / 4)
        await self._finish(min(finish_by, deadline), deadline)

    async def _finish(self, finish_by: float, deadline: float) -> None:
        if self._finishing:
            await self._closed.wait()
            return
        self._finishing = True
        try:
            # Shielded and bounded: checkpoints must reach the log even when the
            # caller is being cancelled, or the next start redelivers more.
            with trio.CancelScope(shield=True, deadline=deadline):
                async with self._reload_lock:
                    await self._retire(list(self._runners.values()), finish_by)
        finally:
            self._closed.set()


async def _close_sink(name: str, sink: Any) -> None:
    aclose = getattr(sink, "aclose", None)
    if not callable(aclose):
        return
    with trio.move_on_after(SINK_CLOSE_TIMEOUT) as scope:
        try:
            await aclose()
        except Exception as exc:
            log.warning("sink %r: aclose() failed: %s", name, _describe(exc))
    if scope.cancelled_caught:
        log.warning("sink %r: aclose() took over %gs; abandoned", name, SINK_CLOSE_TIMEOUT)


# ------------------------------------------------------------------ helpers


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _kind(value: Any) -> str:
    return type(value).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
