"""Configuration: ``config.yaml`` plus the environment, validated into frozen dataclasses.

Every problem becomes one :class:`ConfigError` whose text is a single line
naming the offending key or environment variable, so the CLI can print it
and exit with status 2. Secret values (``http.token``, URL passwords and
query values, sink header values and credential-like sink options) never
appear in an error message, a ``repr``, a masked :meth:`Config.to_dict` or,
through :func:`config_secrets`, a log line. The package reads one file and
the environment, nothing else; sink entries are checked only for their
shape, because only the sink layer knows each sink type's options.

The modules, by job:

- ``sections.py`` - the schema: one frozen dataclass per section, one field per key;
- ``schema.py``   - the field helpers and the one parser that walks any section;
- ``checks.py``   - the value checks (one per kind of value) and how env text is read;
- ``loading.py``  - the YAML file, :func:`load_config`, :func:`config_from_mapping`;
- ``errors.py``   - :class:`ConfigError` and how keys and values are written into it;
- ``secrets.py``  - what is secret, how it is masked, :func:`config_secrets`;
- ``render.py``   - the effective config as JSON text (``check-config``).

Adding a key is one line in ``sections.py`` - a field with its default, its
check and, if it has one, its environment variable::

    request_timeout: float = setting(10.0, checks.positive_seconds)

plus its documented line in the shipped ``config.yaml`` (a test checks that
the file and the schema list the same keys and environment variables).
"""

from __future__ import annotations

from bezant_trio.config.checks import CHANNELS
from bezant_trio.config.errors import ConfigError
from bezant_trio.config.loading import (
    DEFAULT_CONFIG_PATH,
    config_from_mapping,
    default_config,
    load_config,
)
from bezant_trio.config.secrets import MASK, config_secrets
from bezant_trio.config.sections import (
    BackoffConfig,
    BarsConfig,
    Config,
    EventsConfig,
    GatewayConfig,
    HttpConfig,
    MarketDataConfig,
    StoreConfig,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_CONFIG_PATH",
    "MASK",
    "BackoffConfig",
    "BarsConfig",
    "Config",
    "ConfigError",
    "EventsConfig",
    "GatewayConfig",
    "HttpConfig",
    "MarketDataConfig",
    "StoreConfig",
    "config_from_mapping",
    "config_secrets",
    "default_config",
    "load_config",
]
