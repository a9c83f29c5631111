"""``python -m bezant_trio`` runs the CLI."""

from __future__ import annotations

from bezant_trio.cli import main

raise SystemExit(main())
