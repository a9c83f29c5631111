"""Known vulnerabilities in the locked runtime dependencies (pip-audit), opt-in.

The locked set is ``requirements.lock`` at the top of the repository when it
exists, else the runtime closure of ``bezant-trio``'s requirements as they are
installed (what ``pip freeze`` would lock). pip-audit needs a vulnerability
service (PyPI's JSON API or OSV), which the machines this project's CI runs on
cannot reach, so it is not a gate there: it runs only with ``BEZANT_AUDIT=1``
(``BEZANT_AUDIT=1 .venv/bin/python -m pytest tests/reliability/test_dependencies.py``
where a service answers) and is skipped, saying so, otherwise. Where it runs,
a known vulnerability fails it, and packages it could not audit skip it with
their names rather than passing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _runtime_closure(name: str = "bezant-trio") -> dict[str, str]:
    """``{distribution: version}`` for ``name``'s runtime requirements, recursively."""
    found: dict[str, str] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an optional extra, or another platform or Python
            child = requirement.name
            key = child.lower().replace("_", "-")
            if key in found:
                continue
            try:
                found[key] = importlib.metadata.version(child)
            except importlib.metadata.PackageNotFoundError:
                continue  # a marker excluded it on this platform
            todo.append(child)
    return dict(sorted(found.items()))


def _locked(tmp_path: Path) -> Path:
    lock = ROOT / "requirements.lock"
    if lock.exists():
        return lock
    generated = tmp_path / "requirements.lock"
    generated.write_text("".join(f"{n}=={v}\n" for n, v in _runtime_closure().items()))
    return generated


@pytest.mark.skipif(
    os.environ.get("BEZANT_AUDIT") != "1",
    reason="opt-in (BEZANT_AUDIT=1): pip-audit needs a vulnerability service, "
    "which CI's machines cannot reach, so it is no gate there",
)
def test_locked_runtime_dependencies_have_no_known_vulnerabilities(tmp_path: Path) -> None:
    pytest.importorskip("pip_audit", reason="pip-audit is not installed")
    lock = _locked(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--requirement", str(lock), "--no-deps",
         "--disable-pip", "--format", "json", "--progress-spinner", "off", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.skip(f"pip-audit could not reach a vulnerability service: {done.stderr[-300:]}")
    dependencies = report.get("dependencies", [])
    vulnerable = {
        f"{d['name']}=={d['version']}": [v["id"] for v in d.get("vulns", [])]
        for d in dependencies
        if d.get("vulns")
    }
    assert not vulnerable, f"known vulnerabilities in {lock.name}: {vulnerable}"
    unaudited = [d["name"] for d in dependencies if d.get("skip_reason")]
    if unaudited:
        pytest.skip(
            f"pip-audit could not audit {len(unaudited)} of {len(dependencies)} locked "
            f"packages (the package index here serves no per-release vulnerability data): "
            f"{', '.join(unaudited[:8])}"
        )
