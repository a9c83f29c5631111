"""A CPAPI gateway simulator: tickle, session cookie, WebSocket, and fault controls.

Tests, the demo and the benchmarks run against it instead of a real Client
Portal gateway. Start one in-process with::

    async with open_simulator(tls=True) as sim:
        ...  # sim.base_url, sim.ws_url, sim.emit_orders(3), sim.drop_connections()

or out of process with ``bezant-trio simulate --port 0`` and drive it over
``/sim/...``. Its defaults follow the frame corpus (``simulator.corpus``);
``--replay FILE.jsonl`` plays a recorded session instead. The simulator is the
*other* side of the wire: it imports nothing from ``bezant_trio.cpapi``.
"""

from __future__ import annotations

from bezant_trio.simulator.cli import run_cli, serve_simulator
from bezant_trio.simulator.errors import SimulatorError, SimulatorTimeout
from bezant_trio.simulator.gateway import (
    DROP_MODES,
    STREAM_CHANNELS,
    BurstResult,
    GatewaySimulator,
    open_simulator,
)
from bezant_trio.simulator.ledger import SeqRanges
from bezant_trio.simulator.replay import ReplaySession, SessionFormatError
from bezant_trio.simulator.truth import AccountTruth

__all__ = [
    "DROP_MODES",
    "STREAM_CHANNELS",
    "AccountTruth",
    "BurstResult",
    "GatewaySimulator",
    "ReplaySession",
    "SeqRanges",
    "SessionFormatError",
    "SimulatorError",
    "SimulatorTimeout",
    "open_simulator",
    "run_cli",
    "serve_simulator",
]
