"""Loading: read ``config.yaml`` strictly, apply the environment, build a :class:`Config`.

This module owns the way in: finding and reading the file, the YAML loader
(PyYAML's safe loader, refusing duplicate keys), and the two entry points,
:func:`load_config` and :func:`config_from_mapping`. It reads one file and
the environment, nothing else: no network, no store, no other part of the
daemon. What the keys are and how each is checked is ``sections.py``'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from bezant_trio.config.errors import ConfigError, describe
from bezant_trio.config.schema import parse_section, section_names
from bezant_trio.config.sections import Config

__all__ = ["DEFAULT_CONFIG_PATH", "config_from_mapping", "default_config", "load_config"]

#: Used by :func:`load_config` when no path is given and this file exists.
DEFAULT_CONFIG_PATH: Final = "config.yaml"

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


def default_config() -> Config:
    """The built-in defaults (no file, no environment)."""
    return Config()


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
            f"expected a mapping of sections ({', '.join(section_names(Config))}, ...) "
            f"at the top level, got {describe(data)}",
        )
    return parse_section(Config, data, "", env or {})


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
