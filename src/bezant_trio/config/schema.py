"""The schema machinery: fields that carry their own rules, and the one parser.

A configuration section is a frozen dataclass (see ``sections.py``) whose
fields are declared in one of three ways:

- :func:`setting` - one value: its default, the check that turns a raw value
  into a typed one (or raises :class:`ConfigError`), optionally the
  environment variable that overrides it and how it is masked when shown;
- ``field(default_factory=SomeSection)`` - a nested section, itself such a
  dataclass (recognised by its factory, a :class:`Section` subclass);
- :func:`topic_table` - a per-topic table (``events.capacity``), merged over
  its defaults, optionally with an environment variable per topic.

:func:`parse_section` walks those fields for any section: it refuses unknown
keys (with a "did you mean" hint), runs each check under its dotted key path,
applies environment overrides under the variable's name, then gives the
built section a chance to check its fields together (``_check_section``).
:func:`to_plain` and :class:`Section`'s ``repr`` walk the same fields to
render a section with its secrets masked. Nothing here names a key: the keys
live only in ``sections.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, Final, TypeVar

from bezant_trio.config.errors import ConfigError, describe, join_key, suggest
from bezant_trio.util import plain

__all__ = [
    "FrozenMap",
    "Section",
    "env_reader",
    "env_variables",
    "parse_section",
    "section_names",
    "setting",
    "to_plain",
    "topic_table",
]

#: Takes the key path (or variable name) and the raw value; returns the typed
#: value or raises ConfigError.
Check = Callable[[str, Any], Any]
#: Takes the variable name and its text; returns the raw value a check takes.
EnvReader = Callable[[str, str], object]
#: Takes a plain value; returns what may be shown of it.
Mask = Callable[[Any], Any]

_S = TypeVar("_S", bound="Section")
_C = TypeVar("_C", bound=Callable[..., Any])

# Field metadata keys.
_KIND: Final = "bezant_trio.config.kind"
_CHECK: Final = "check"
_ENV: Final = "env"
_MASK: Final = "mask"
_DEFAULTS: Final = "defaults"
_SETTING, _TABLE = "setting", "table"
_ENV_READER_ATTR: Final = "_bezant_env_reader"


# --------------------------------------------------------------------------- declaring


def setting(
    default: Any,
    check: Check,
    *,
    env: str | None = None,
    mask: Mask | None = None,
    repr: bool = True,
) -> Any:
    """A configuration key: ``name: type = setting(default, check, env=..., mask=...)``.

    ``default`` must be immutable (the dataclasses are frozen and share it).
    ``env`` names the environment variable that overrides the file; its text
    is turned into a raw value by the check's :func:`env_reader` (plain text
    if it has none). ``mask`` renders the value for :meth:`Config.to_dict`
    with ``mask_secrets`` and for ``repr``; ``repr=False`` leaves the key out
    of ``repr`` altogether.
    """
    metadata = {_KIND: _SETTING, _CHECK: check, _ENV: env, _MASK: mask}
    return dataclasses.field(default=default, repr=repr, metadata=metadata)


def topic_table(
    defaults: Mapping[str, Any], check: Check, *, env: Mapping[str, str] | None = None
) -> Any:
    """A per-topic table: keys are topic names, values pass ``check``, merged over ``defaults``.

    ``env`` maps a topic to the environment variable that overrides its value.
    """
    frozen = FrozenMap(defaults)
    metadata = {_KIND: _TABLE, _CHECK: check, _ENV: FrozenMap(env), _DEFAULTS: frozen}
    return dataclasses.field(default_factory=lambda: frozen, metadata=metadata)


def env_reader(reader: EnvReader) -> Callable[[_C], _C]:
    """Decorate a check with how an environment variable's text becomes its raw value.

    ``@env_reader(read_env_bool)`` on the boolean check lets ``BEZANT_VERIFY_TLS=yes``
    reach it as ``True``; a check without one gets the text itself.
    """

    def attach(check: _C) -> _C:
        setattr(check, _ENV_READER_ATTR, reader)
        return check

    return attach


class FrozenMap(Mapping[Any, Any]):
    """A read-only mapping that, unlike ``MappingProxyType``, pickles."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[Any, Any] | None = None) -> None:
        self._data: dict[Any, Any] = dict(data or {})

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return repr(self._data)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._data,))


class Section:
    """Base of the section dataclasses: a ``repr`` with every secret masked.

    Subclasses are ``@dataclass(frozen=True, repr=False)`` so this ``repr`` is
    kept and a logged config never carries a token or a URL's password. A
    subclass may define ``_check_section(self, path, given)`` to check its
    fields together once they are parsed and overridden; ``given`` holds the
    keys the file set, so the error can point at one of them.
    """

    def __repr__(self) -> str:
        parts = []
        for field in dataclasses.fields(self):
            if not field.repr:
                continue
            value = getattr(self, field.name)
            mask = field.metadata.get(_MASK)
            if mask is not None:
                value = mask(plain(value))
            parts.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# --------------------------------------------------------------------------- parsing


def _section_type(field: dataclasses.Field[Any]) -> type[Section] | None:
    """The section class of a nested-section field, else ``None``."""
    factory = field.default_factory
    if isinstance(factory, type) and issubclass(factory, Section):
        return factory
    return None


def parse_section(cls: type[_S], raw: object, path: str, env: Mapping[str, str]) -> _S:
    """Build section ``cls`` from its raw mapping (``None`` = all defaults) and ``env``.

    ``path`` is the section's dotted key path (``""`` for the top level).
    Raises :class:`ConfigError` naming the first bad key or variable.
    """
    fields = dataclasses.fields(cls)
    given = _known_keys(path, raw, [field.name for field in fields])
    values: dict[str, Any] = {}
    for field in fields:
        key = join_key(path, field.name)
        kind = field.metadata.get(_KIND)
        nested = _section_type(field)
        if nested is not None:
            values[field.name] = parse_section(nested, given.get(field.name), key, env)
        elif kind == _TABLE:
            values[field.name] = _parse_table(key, given.get(field.name), field.metadata, env)
        elif kind == _SETTING:
            check: Check = field.metadata[_CHECK]
            if field.name in given:
                values[field.name] = check(key, given[field.name])
            variable = field.metadata[_ENV]
            if variable is not None and variable in env:
                values[field.name] = _from_env(check, variable, env[variable])
        else:
            raise TypeError(
                f"{cls.__name__}.{field.name} is not declared with setting(), topic_table() "
                "or field(default_factory=<a Section>)"
            )
    built = cls(**values)
    check_section = getattr(built, "_check_section", None)
    if check_section is not None:
        check_section(path, frozenset(given))
    return built


def to_plain(value: Section, *, mask_secrets: bool) -> dict[str, Any]:
    """A section as plain dicts, lists and scalars; with ``mask_secrets``, masked."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if isinstance(item, Section):
            data[field.name] = to_plain(item, mask_secrets=mask_secrets)
            continue
        item = plain(item)
        mask = field.metadata.get(_MASK)
        data[field.name] = mask(item) if mask_secrets and mask is not None else item
    return data


def section_names(cls: type[Section]) -> list[str]:
    """The keys of ``cls`` that are sections of their own (for messages)."""
    return [field.name for field in dataclasses.fields(cls) if _section_type(field) is not None]


def env_variables(cls: type[Section], path: str = "") -> dict[str, str]:
    """Every environment variable of the schema below ``cls``, mapped to its key path."""
    found: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        key = join_key(path, field.name)
        nested = _section_type(field)
        if nested is not None:
            found |= env_variables(nested, key)
        elif field.metadata.get(_KIND) == _TABLE:
            found |= {
                variable: f"{key}.{topic}" for topic, variable in field.metadata[_ENV].items()
            }
        elif field.metadata.get(_ENV) is not None:
            found[field.metadata[_ENV]] = key
    return found


def _known_keys(path: str, raw: object, allowed: Collection[str]) -> Mapping[Any, Any]:
    """``raw`` checked to be a mapping with only ``allowed`` keys; ``None`` is empty."""
    if raw is None:  # a section header with everything below commented out
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            path, f"expected a mapping with keys {', '.join(allowed)}, got {describe(raw)}"
        )
    for key in raw:
        if not isinstance(key, str) or key not in allowed:
            hint = suggest(key, list(allowed))
            if isinstance(key, bool):
                hint = " (YAML reads unquoted yes/no/on/off keys as booleans; quote the key)"
            elif not hint:
                hint = f" (expected one of: {', '.join(allowed)})"
            raise ConfigError(join_key(path, key), f"unknown key{hint}")
    return raw


def _parse_table(
    key: str, raw: object, metadata: Mapping[str, Any], env: Mapping[str, str]
) -> FrozenMap:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            key,
            "expected a mapping of topic name to value (e.g. orders, marketdata, default), "
            f"got {describe(raw)}",
        )
    check: Check = metadata[_CHECK]
    table = dict(metadata[_DEFAULTS])
    for topic, item in raw.items():
        entry = join_key(key, topic)
        if not isinstance(topic, str) or not topic or any(char.isspace() for char in topic):
            raise ConfigError(
                entry, "topic names must be non-empty strings without whitespace (quote it in YAML)"
            )
        table[topic] = check(entry, item)
    for topic, variable in metadata[_ENV].items():
        if variable in env:
            table[topic] = _from_env(check, variable, env[variable])
    return FrozenMap(table)


def _from_env(check: Check, variable: str, text: str) -> Any:
    reader: EnvReader | None = getattr(check, _ENV_READER_ATTR, None)
    return check(variable, text if reader is None else reader(variable, text))
