"""The sink contract: what a sink class provides, how it declares its options,
and the errors a sink raises to steer delivery.

A sink class (registered by a plugin's ``register_sink_types`` hook) has::

    class MySink:
        type_name = "my-sink"                       # unique across all plugins
        options = {                                 # the config keys it accepts
            "path": str,                            # a bare type: required
            "fsync": Option(str, default="batch", choices=("batch", "never")),
        }

        def __init__(self, name: str, **options): ...     # no I/O here
        async def deliver(self, batch: list[Event]) -> None: ...
        async def aclose(self) -> None: ...
        def reopen(self) -> None: ...                       # optional (SIGHUP)
        def set_cursor_space(self, cursor_space: str) -> None: ...  # optional

The manager validates a ``sinks:`` entry against ``options`` (unknown,
missing or mistyped keys are a :class:`SinkConfigError` naming the sink), then
calls ``MySink(name, **options)``; a ``ValueError`` raised there is reported
the same way. ``deliver`` gets events of one topic in cursor order; raising
asks for a retry of the same batch (:class:`DeliveryError` can carry a
``retry_after`` hint), raising :class:`SinkDisabled` stops the sink for good.

Delivery is at least once, so a destination may see an event twice. A sink
that gives its destination ids to deduplicate on builds them with
:func:`event_id` in the cursor space the manager hands ``set_cursor_space``
(before the first delivery): ``(topic, cursor)`` alone is reused after a
restart without the durable log, where cursors start at 1 again.

This module owns only the contract: no Trio, no hub, no plugin manager.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from bezant_trio.model import Event
from bezant_trio.util import first_line

__all__ = [
    "REQUIRED",
    "DeliveryError",
    "Option",
    "Sink",
    "SinkConfigError",
    "SinkDisabled",
    "event_id",
    "normalise_option_specs",
    "validate_options",
]


class SinkConfigError(Exception):
    """A sink or sink plugin is misconfigured; ``str()`` is one line naming it.

    The daemon refuses to start (exit status 2) or, on SIGHUP, keeps the
    running sinks.
    """


class DeliveryError(Exception):
    """A delivery failed and should be retried.

    ``retry_after`` (seconds) replaces the next backoff delay, capped at the
    sink's ``retry.max`` (a webhook's ``Retry-After``). Any other exception
    from ``deliver`` is retried the same way, with plain backoff.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkDisabled(Exception):
    """The destination asked never to be called again (a webhook's 410 Gone).

    The sink stops delivering, its state becomes ``disabled``, and only a
    changed configuration (SIGHUP) or a restart starts it again.
    """


def event_id(cursor_space: str, event: Event) -> str:
    """``<cursor space>:<topic>:<cursor>``: the same for the same event, never for another.

    The cursor space (``hub.cursor_space``) is one per durable log file, so an
    event delivered again after a restart keeps its id; without the log it is
    new at every start, so a reused cursor never repeats an id.
    """
    return f"{cursor_space}:{event.topic}:{event.cursor}"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an option that must be given.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Option:
    """How one config key of a sink type is checked.

    ``kind`` is the accepted type (``float`` also takes an int, ``int`` and
    ``float`` never take a bool, ``dict`` takes any mapping, ``list`` any
    sequence). ``default=None`` makes the option optional and allows ``null``.
    ``check`` gets the typed value and returns it (possibly normalised) or
    raises ``ValueError`` saying what is wrong. ``secret`` keeps the value out
    of every error message.
    """

    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: Sequence[Any] | None = None
    check: Callable[[Any], Any] | None = None
    secret: bool = False
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@runtime_checkable
class Sink(Protocol):
    """What the manager needs from a sink instance (``reopen`` is optional)."""

    type_name: ClassVar[str]
    options: ClassVar[Mapping[str, Any]]

    async def deliver(self, batch: list[Event]) -> None:
        """Hand one batch (one topic, cursor order) to the destination; raise to retry."""
        ...

    async def aclose(self) -> None:
        """Release files, sockets and clients; called once, after the last delivery."""
        ...


def normalise_option_specs(owner: str, options: Any) -> dict[str, Option]:
    """``{key: type | Option}`` to ``{key: Option}``; SinkConfigError naming ``owner``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise SinkConfigError(
            f"{owner}: `options` must be a dict of option name -> type or Option, "
            f"not {type(options).__name__}"
        )
    specs: dict[str, Option] = {}
    for key, spec in options.items():
        if isinstance(spec, Option):
            specs[key] = spec
        elif isinstance(spec, type) or (
            isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec)
        ):
            specs[key] = Option(spec)
        else:
            raise SinkConfigError(
                f"{owner}: option {key!r} must be declared with a type or an Option, not {spec!r}"
            )
    return specs


def validate_options(
    where: str, specs: Mapping[str, Option], given: Mapping[str, Any]
) -> dict[str, Any]:
    """Check ``given`` against ``specs``; the typed options with defaults filled in.

    ``where`` starts every error message (e.g. ``sink 'audit' (type file)``).
    """
    unknown = [key for key in given if key not in specs]
    if unknown:
        key = unknown[0]
        hint = _suggest(str(key), list(specs))
        known = ", ".join(sorted(specs)) or "none"
        raise SinkConfigError(f"{where}: unknown option {key!r}{hint} (options: {known})")
    values: dict[str, Any] = {}
    for key, spec in specs.items():
        if key not in given or (given[key] is None and spec.default is None):
            if spec.required:
                raise SinkConfigError(f"{where}: missing required option {key!r}")
            values[key] = copy.deepcopy(spec.default)
            continue
        values[key] = _check_one(where, key, spec, given[key])
    return values


def _check_one(where: str, key: str, spec: Option, value: Any) -> Any:
    shown = "a value" if spec.secret else _show(value)
    value = _coerce(spec.kind, value)
    if value is _MISMATCH:
        raise SinkConfigError(
            f"{where}: option {key!r} must be {_kind_name(spec.kind)}, got {shown}"
        )
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices)
        raise SinkConfigError(f"{where}: option {key!r} must be one of {allowed}, got {shown}")
    if spec.check is not None:
        try:
            value = spec.check(value)
        except (ValueError, TypeError) as exc:
            reason = "is not valid" if spec.secret else first_line(exc)
            raise SinkConfigError(f"{where}: option {key!r} {reason}") from None
    return value


_MISMATCH: Any = object()


def _coerce(kind: type | tuple[type, ...], value: Any) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k is dict and isinstance(value, Mapping):
            return dict(value)
        if k is list and isinstance(value, list | tuple):
            return list(value)
        if k not in (float, int, dict, list) and isinstance(value, k):
            return value
    return _MISMATCH


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    names |= {dict: "a mapping", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, f"a {k.__name__}") for k in kinds)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
