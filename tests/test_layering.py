"""Imports go one way (docs/architecture.md, "The parts"): a test, so a wrong import is a red line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bezant_trio"

#: Package -> the packages of bezant_trio it must never import.
FORBIDDEN = {
    "http": {"cpapi", "sinks", "daemon", "simulator"},
    "sinks": {"cpapi", "http", "daemon", "simulator"},
    "cpapi": {"http", "sinks", "daemon"},
    "store": {"cpapi", "http", "sinks", "daemon", "simulator"},
    "simulator": {"cpapi", "http", "sinks", "store", "daemon"},
    "config": {"cpapi", "http", "sinks", "store", "daemon", "simulator"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "bezant_trio" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_what_is_above_it(package: str) -> None:
    wrong = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        hits = _imports(path) & FORBIDDEN[package]
        if hits:
            wrong.append(f"{path.relative_to(PACKAGE)} imports {', '.join(sorted(hits))}")
    assert not wrong, wrong


def test_the_daemon_imports_one_name_from_http() -> None:
    tree = ast.parse((PACKAGE / "daemon.py").read_text())
    from_http = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bezant_trio.http")
        for alias in node.names
    ]
    assert from_http and set(from_http) <= {"HttpService", "HttpLimits"}, from_http
