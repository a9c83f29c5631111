"""``python -m bezant_trio.simulator`` runs the gateway simulator CLI."""

from __future__ import annotations

from bezant_trio.simulator.cli import run_cli

raise SystemExit(run_cli())
