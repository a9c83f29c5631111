"""One child run of the mutation check (tests/test_mutations.py), forked from a forkserver.

Starting a child pytest costs 1.7 s of CPU before any test runs, most of it
importing pytest, hypothesis, trio, Quart and the rest; the check starts 18.
The forkserver imports those once (:data:`PRELOAD`, never ``bezant_trio``),
and each run forks from it: a process of its own, with the mutated copy first
on ``sys.path`` and ``PYTHONPATH`` (so the daemons its tests start import the
copy too), its own environment, working directory and output file.
tests/conftest.py still checks that ``bezant_trio`` comes from the copy.

Imports nothing of ``bezant_trio``, so unpickling :func:`run` in the
forkserver cannot load the original.
"""

from __future__ import annotations

import os
import sys

#: What the forkserver imports once for every run: third-party only.
PRELOAD = [
    "pytest",
    "_pytest.python",
    "_pytest.assertion.rewrite",
    "hypothesis",
    "trio",
    "trio.testing",
    "pytest_trio.plugin",
    "pytest_timeout",
    "quart",
    "quart_trio",
    "hypercorn.trio",
    "httpx",
    "h11",
    "h2.connection",
    "wsproto",
    "trio_websocket",
    "orjson",
    "yaml",
    "pluggy",
    "prometheus_client",
]


def run(args: list[str], env: dict[str, str], cwd: str, copy: str, output: str) -> None:
    """``pytest args`` in this (forked) process; exits with pytest's status."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path.insert(0, copy)
    sys.dont_write_bytecode = "PYTHONDONTWRITEBYTECODE" in env
    import pytest

    code = pytest.main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
