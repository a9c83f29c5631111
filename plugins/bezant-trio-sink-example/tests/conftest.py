"""Makes bezant-trio's sink-testing fixtures available to these tests.

Once bezant-trio registers its pytest plugin (``pytest11`` entry point) this
import is unnecessary; ``pytest_plugins = ["bezant_trio.testing.pytest_plugin"]``
in a top-level conftest works too.
"""

from __future__ import annotations

from bezant_trio.testing.pytest_plugin import (  # noqa: F401 - fixtures
    bezant_daemon_factory,
    bezant_gateway_simulator,
    bezant_hub,
    bezant_plugin_manager,
    bezant_sink_manager_factory,
)
