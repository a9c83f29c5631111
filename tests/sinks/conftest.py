"""Fixtures of the sink tests: the public pytest plugin's fixtures, and a webhook receiver.

The plugin's fixtures are imported rather than named in ``pytest_plugins``,
which pytest only honours in a top-level conftest.
"""

from __future__ import annotations

import pytest
import trio

from bezant_trio.testing import WebhookReceiver
from bezant_trio.testing.pytest_plugin import (  # noqa: F401 - fixtures
    bezant_daemon_factory,
    bezant_gateway_simulator,
    bezant_hub,
    bezant_plugin_manager,
    bezant_sink_manager_factory,
)


@pytest.fixture
async def webhook_receiver(nursery: trio.Nursery) -> WebhookReceiver:
    """A scripted HTTP receiver on 127.0.0.1 (port 0) that records every request."""
    return await nursery.start(WebhookReceiver().run)
