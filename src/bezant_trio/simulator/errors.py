"""Errors of the gateway simulator (one base class, as every subsystem has)."""

from __future__ import annotations

__all__ = ["SimulatorError", "SimulatorTimeout"]


class SimulatorError(Exception):
    """Base error of the gateway simulator."""


class SimulatorTimeout(SimulatorError):
    """A ``wait_*`` condition did not hold in time."""
