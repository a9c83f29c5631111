"""Where the daemon's RSS after start comes from: resident memory added by each first import.

    .venv/bin/python bench/rss_imports.py > bench/profile/rss-after-start.txt

Imports what ``python -m bezant_trio run`` imports (the CLI and the daemon)
and records, for every top-level package imported for the first time, how
much VmRSS grew while it (and whatever it pulled in first) loaded. The
figures are inclusive and order-dependent (a package shared by two is
counted at the first), so read them as "what removing this import would
save at most". The memory profile of a figure that is about modules, not
objects.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    start = rss_kib()
    grown: dict[str, int] = {}
    original = builtins.__import__

    def tracking(name: str, *args: Any, **kwargs: Any) -> Any:
        level = kwargs.get("level", args[3] if len(args) > 3 else 0)
        top = name.split(".")[0]
        # A relative import (level > 0) is inside a package already counted.
        first = not level and top not in sys.modules and top not in grown
        before = rss_kib() if first else 0
        try:
            return original(name, *args, **kwargs)
        finally:
            if first:
                grown[top] = rss_kib() - before

    builtins.__import__ = tracking
    try:
        import bezant_trio.cli
        import bezant_trio.daemon  # noqa: F401
    finally:
        builtins.__import__ = original
    total = rss_kib()
    print(f"VmRSS: {start:,} KiB at interpreter start, {total:,} KiB after the daemon's imports")
    print(f"modules loaded: {len(sys.modules)}")
    print()
    print("KiB added by the first import of each top-level package (inclusive of what it")
    print("pulled in first; order-dependent):")
    for name, kib in sorted(grown.items(), key=lambda kv: -kv[1])[:30]:
        if kib > 0:
            print(f"  {kib:7,}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
