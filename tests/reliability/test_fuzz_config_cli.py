"""Config fuzzing through the real command line: a valid config, or exit 2 with one line.

``tests/config/test_config.py`` fuzzes the loader in-process; this runs a seeded
handful of random YAML documents (near-valid ones, hostile ones, plain junk)
through ``python -m bezant_trio check-config --config FILE`` and holds the
process to its contract: exit 0 printing the effective config as JSON, or
exit 2 printing exactly one line on stderr, and never a traceback.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from bezant_trio.testing import run_cli

DOCUMENTS = 14

_KEYS: dict[str, Any] = {
    "gateway": {"url": str, "verify_tls": bool, "tickle_interval": float},
    "http": {"bind": str, "token": str, "allow_unauthenticated": bool},
    "events": {
        "capacity": {"orders": int, "pnl": int, "marketdata": int, "default": int},
        "heartbeat_timeout": float,
        "ready_timeout": float,
        "backoff": {"min": float, "max": float},
        "channels": list,
        "capture_other": bool,
        "marketdata": {
            "fields": list,
            "idle_unsubscribe": float,
            "max_conids": int,
            "resubscribe_interval": float,
        },
    },
    "store": {
        "path": str,
        "synchronous": str,
        "prune_interval": float,
        "max_events_per_topic": int,
        "retention_days": {"orders": float, "gap": float, "default": float},
    },
    "shutdown_grace": float,
    "sinks": list,
}

_HOSTILE = [
    "",
    "\x00\x01\x02",
    "- just\n- a\n- list\n",
    "gateway: [unclosed\n",
    "a: &a [*a]\n",  # a self-referencing alias
    "x: &x [1,2]\ny: &y [*x,*x,*x,*x]\nz: &z [*y,*y,*y,*y]\nsinks: [*z,*z,*z,*z]\n",
    "http: {bind: '0.0.0.0:8080'}\n",
    "http: {bind: '[::]:0', token: ''}\n",
    "events: {capacity: {orders: 1e400}}\n",
    "events: {backoff: {min: .nan, max: .inf}}\n",
    "store: {path: !!binary aGVsbG8=}\n",
    "gateway: !!python/object/apply:os.system ['true']\n",
    "shutdown_grace: 99999999999999999999999999999\n",
    "\ufeffgateway: {url: 'ftp://x'}\n",
    "sinks: [{name: a, type: webhook, url: 'http://x', secret: 'whsec_!!notbase64'}]\n",
    "sinks: [{name: a, type: file, path: /}, {name: a, type: test}]\n",
    "events: {channels: [orders, orders, bogus]}\n",
    "{" * 300 + "}" * 300,
    "\t\tgateway:\n  url: x\n",
    "%YAML 9.9\n---\ngateway: {}\n",
]


_VALID_STRINGS = {
    "url": ["http://127.0.0.1:5000/v1/api", "https://localhost:5000/v1/api"],
    "bind": ["127.0.0.1:0", "[::1]:8080", "localhost:9000"],
    "token": ["a-long-enough-token-123456"],
    "path": ["./state/events.db"],
    "synchronous": ["normal", "full"],
}


def _value(key: str, kind: Any, rng: random.Random) -> Any:
    """A valid value for ``key`` most of the time, a wrong one on purpose otherwise."""
    if isinstance(kind, dict):
        return {k: _value(k, v, rng) for k, v in kind.items() if rng.random() < 0.3}
    if rng.random() < 0.15:
        return rng.choice([None, True, -1, 0, 2**70, 1.5, float("inf"), "x", [], {}, "-5"])
    if kind is bool:
        return rng.choice([True, False])
    if kind is int:
        return rng.choice([1, 7, 100, 5000])
    if kind is float:
        return rng.choice([0.5, 1, 30, 90.5])
    if kind is list:
        if key == "fields":
            return rng.sample(["31", "84", "86", "85"], rng.randint(1, 4))
        if key == "sinks":
            return rng.choice([[], [{"name": "t", "type": "test"}]])
        return rng.sample(["orders", "pnl", "trades"], rng.randint(1, 3))
    return rng.choice(_VALID_STRINGS.get(key, ["x"]))


def _document(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(_HOSTILE)
    if roll < 0.25:
        return "".join(rng.choice("ab:{}[]-&*!|'\"#\n \t.,01%@`?~=") for _ in range(60))
    document = {k: _value(k, v, rng) for k, v in _KEYS.items() if rng.random() < 0.4}
    if rng.random() < 0.2:
        document[rng.choice(["gatway", "sink", "extra", "http2"])] = {"x": 1}
    return yaml.safe_dump(document)


def test_random_config_files_give_a_config_or_one_line_and_exit_2(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    outcomes = {0: 0, 2: 0}
    for index in range(DOCUMENTS):
        text = _document(rng)
        path = tmp_path / f"config-{index}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        done = run_cli("check-config", "--config", str(path), cwd=tmp_path)
        where = f"document {index} (seed {seed}):\n{text[:500]}"
        assert "Traceback" not in done.stderr + done.stdout, f"{where}\n{done.stderr[-2000:]}"
        assert done.returncode in (0, 2), f"{where}\nexit {done.returncode}: {done.stderr}"
        if done.returncode == 0:
            assert isinstance(json.loads(done.stdout), dict), where
        else:
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("bezant-trio: "), (where, lines)
            assert "!!notbase64" not in done.stderr, "a sink secret was echoed"
        outcomes[done.returncode] += 1
    print(f"check-config outcomes (seed {seed}): {outcomes}")


def test_every_hostile_document_gives_one_line_or_a_config(tmp_path: Path) -> None:
    for index, text in enumerate(_HOSTILE):
        path = tmp_path / f"hostile-{index}.yaml"
        path.write_text(text, encoding="utf-8")
        done = run_cli("check-config", "--config", str(path), cwd=tmp_path)
        assert "Traceback" not in done.stderr, (text, done.stderr[-2000:])
        assert done.returncode in (0, 2), (text, done.returncode, done.stderr)
        if done.returncode == 2:
            assert len(done.stderr.strip().splitlines()) == 1, (text, done.stderr)


def test_check_config_rejects_the_sink_entries_run_rejects(tmp_path: Path) -> None:
    for sinks in (
        [{"name": "a", "type": "no-such-type"}],
        [{"name": "a", "type": "webhook", "url": "http://127.0.0.1:9/x", "secret": "whsec_!!"}],
        [{"name": "a", "type": "file"}],  # path is required
    ):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"http": {"bind": "127.0.0.1:0"}, "sinks": sinks}))
        ran = run_cli("run", "--config", str(path), cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        checked = run_cli("check-config", "--config", str(path), cwd=tmp_path)
        assert checked.returncode == 2, f"check-config accepted {sinks} that run rejects"
