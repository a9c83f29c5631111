"""The documentation holds: its links resolve, and the commands it gives do what it says."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "bench").glob("*.md")),
    ROOT / "tests" / "README.md",
    ROOT / "tests" / "reliability" / "README.md",
]
_LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    text = page.read_text()
    for target, _anchor in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # an external URL
        assert (page.parent / target).exists(), f"{page} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_anchor_within_the_docs_exists(page: Path) -> None:
    text = page.read_text()
    for target, anchor in _LINK.findall(text) + [
        ("", a) for a in re.findall(r"\]\((#[^)\s]+)\)", text)
    ]:
        if not anchor or re.match(r"[a-z]+:", target):
            continue
        linked = page if not target else (page.parent / target)
        if linked.suffix != ".md":
            continue
        headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}
        assert anchor[1:] in headings, f"{page}: no heading for {target}{anchor}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_the_token_line_of_operations_md_writes_a_private_non_empty_token(
    tmp_path: Path,
) -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    line = next(
        line for line in text.splitlines() if "BEZANT_API_TOKEN=" in line and "python3" in line
    )
    env_file = tmp_path / "env"
    command = line.replace("/etc/bezant-trio/env", str(env_file))
    subprocess.run(
        ["bash", "-c", command],
        check=True,
        timeout=30,
        env={**os.environ, "PATH": os.environ["PATH"]},
    )
    name, _, token = env_file.read_text().strip().partition("=")
    assert name == "BEZANT_API_TOKEN" and len(token) == 48
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
