"""``sinks:`` entries: parsed, validated and turned into sink instances.

Every check of a sink entry lives here, so ``check-config``, start-up and a
SIGHUP reload accept exactly the same configs: the shape of the list, each
entry's ``name`` (present, a non-empty string, unique) and ``type`` (present,
installed), the common keys (``topics``, ``batch_size``, ``retry``) and the
type's own options, declared by its class (``bezant_trio.sinks.interface``).
Errors are :class:`SinkConfigError`, one line that names the entry: by its key
path (``sinks[1].name: ...``) until it has a name, then by the name
(``sink 'audit' (type file): ...``).

Owns no delivery and no plugin loading: it is given the sink types by name.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from bezant_trio.config.errors import describe as _shown
from bezant_trio.sinks.interface import (
    Option,
    SinkConfigError,
    normalise_option_specs,
    validate_options,
)
from bezant_trio.sinks.plugins import plugin_manager, sink_types
from bezant_trio.util import first_line, plain

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_RETRY",
    "MAX_BATCH_SIZE",
    "SinkSpec",
    "build_sink",
    "parse_sink_specs",
    "validate_sink_configs",
]

#: Events per ``deliver`` call, at most: whatever is ready, up to this. Each
#: call is a POST or an fsync for the built-in sinks, so a busy topic costs 10x
#: fewer of them than at 100 (bench/ANALYSIS.md); an idle one still delivers
#: each event at once.
DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000
#: Seconds: the first retry delay, and the cap of the exponential backoff.
DEFAULT_RETRY = (1.0, 60.0)

#: The key of the config section, the start of every key path in messages.
_SECTION = "sinks"
_COMMON_KEYS = ("name", "type", "topics", "batch_size", "retry")


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


def parse_sink_specs(
    configs: Sequence[Mapping[str, Any]], types: Mapping[str, type]
) -> list[SinkSpec]:
    """Every entry of ``sinks:`` checked against ``types``; raises SinkConfigError."""
    entries = _check_entries(configs)
    return [_parse_spec(entry, types) for entry in entries]


def build_sink(spec: SinkSpec, types: Mapping[str, type]) -> Any:
    """An instance of ``spec``'s type with its options (constructors do no I/O)."""
    cls = types[spec.type_name]
    try:
        return cls(spec.name, **spec.options)
    except SinkConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise SinkConfigError(
            f"sink {spec.name!r} (type {spec.type_name}): {first_line(exc)}"
        ) from None


def validate_sink_configs(
    sink_configs: Sequence[Mapping[str, Any]], *, pm: pluggy.PluginManager | None = None
) -> None:
    """Check ``sinks:`` exactly as start-up does (types, options, names); raises SinkConfigError.

    Builds each sink (constructors do no I/O) and drops it: ``check-config`` uses
    this so it accepts exactly what ``run`` accepts.
    """
    types = sink_types(pm if pm is not None else plugin_manager())
    for spec in parse_sink_specs(sink_configs, types):
        build_sink(spec, types)


# ------------------------------------------------------------------ entries


def _check_entries(configs: Any) -> list[Mapping[str, Any]]:
    """The list's shape, and each entry's name and type, before anything else.

    A first pass over every entry, so the message is about the first entry
    without a usable name or type even when an earlier one has a bad option.
    """
    if isinstance(configs, str | bytes) or not isinstance(configs, Sequence):
        raise SinkConfigError(
            f"{_SECTION}: expected a list of sink mappings, got {_shown(configs)}"
        )
    first_use: dict[str, int] = {}
    for index, entry in enumerate(configs):
        key = f"{_SECTION}[{index}]"
        if not isinstance(entry, Mapping):
            raise SinkConfigError(
                f"{key}: expected a mapping with 'name' and 'type', got {_shown(entry)}"
            )
        if "name" not in entry:
            raise SinkConfigError(f"{key}.name: missing: every sink needs a unique name")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise SinkConfigError(f"{key}.name: expected a non-empty string, got {_shown(name)}")
        if name in first_use:
            raise SinkConfigError(
                f"{key}.name: duplicate sink name {name!r} (also used by"
                f" {_SECTION}[{first_use[name]}]); sink names must be unique"
            )
        first_use[name] = index
        if "type" not in entry:
            raise SinkConfigError(
                f"{key}.type: missing: set the sink type, e.g. 'file', 'webhook' or 'test'"
            )
        type_name = entry["type"]
        if not isinstance(type_name, str) or not type_name.strip():
            raise SinkConfigError(
                f"{key}.type: expected a non-empty string, got {_shown(type_name)}"
            )
    return list(configs)


def _parse_spec(config: Mapping[str, Any], types: Mapping[str, type]) -> SinkSpec:
    name: str = config["name"]
    type_name: str = config["type"]
    cls = types.get(type_name)
    if cls is None:
        close = difflib.get_close_matches(type_name, list(types), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(sorted(types)) or "none"
        raise SinkConfigError(
            f"sink {name!r}: unknown sink type {type_name!r} (installed: {known}){hint}"
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
        source=plain(config),
    )


def _parse_topics(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ("*",)
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise SinkConfigError(
            f"{where}: `topics` must be a list of topic names or globs"
            f' (e.g. [orders, "marketdata:*"]), got {type(value).__name__}'
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
            f"{where}: `batch_size` must be an integer from 1 to {MAX_BATCH_SIZE},"
            f" got {_shown(value)}"
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
