"""``bezant-trio check-config`` and ``run`` in a subprocess: what the configuration refuses.

The loader's rules are tested in-process in ``test_config.py``; these hold the
command line to them: exit 2 with one line on stderr naming the key, or exit 0
with the effective config as JSON, never a traceback and never a secret.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from test_config import FUZZ_2_70_DOCUMENT

from bezant_trio.testing import run_cli


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bezant-trio: "), done.stderr
    return lines[0]


def test_a_2_70_capacity_is_one_line_not_an_orjson_traceback(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(FUZZ_2_70_DOCUMENT)
    line = one_error_line(run_cli("check-config", "--config", str(path), cwd=tmp_path))
    assert line.startswith("bezant-trio: events.capacity.default: expected a positive integer")


def test_a_2_70_sink_option_is_printed_or_refused_in_one_line(tmp_path: Path) -> None:
    # The test sink takes any integer seed; whichever layer judges it, the
    # command answers with JSON or one line.
    path = tmp_path / "config.yaml"
    path.write_text("sinks: [{name: t, type: test, seed: 1180591620717411303424}]\n")
    done = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    if done.returncode == 0:
        assert json.loads(done.stdout)["sinks"][0]["seed"] == 2**70
    else:
        one_error_line(done)


def test_an_empty_env_token_stops_check_config_and_run(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("http: {bind: '127.0.0.1:0', token: from-the-file}\n")
    for command in ("check-config", "run"):
        done = run_cli(command, "--config", str(path), cwd=tmp_path, env={"BEZANT_API_TOKEN": ""})
        line = one_error_line(done)
        assert line.startswith("bezant-trio: BEZANT_API_TOKEN: is set but empty"), line
        assert "from-the-file" not in line


def test_check_config_masks_url_passwords_query_values_and_sink_headers(tmp_path: Path) -> None:
    secrets = ("hunter2", "query-secret-1", "api-key-value", "bearer-value")
    document = {
        "gateway": {"url": "http://admin:hunter2@127.0.0.1:5000/v1/api?key=query-secret-1"},
        "sinks": [
            {
                "name": "hook",
                "type": "webhook",
                "url": "http://127.0.0.1:9/hook?token=query-secret-1",
                "headers": {"X-Api-Key": "api-key-value", "Authorization": "bearer-value"},
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    done = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["gateway"]["url"] == "http://***@127.0.0.1:5000/v1/api?key=***"
    assert shown["sinks"][0]["headers"] == {"X-Api-Key": "***", "Authorization": "***"}
    for secret in secrets:
        assert secret not in done.stdout + done.stderr, secret

    path.write_text("gateway: {url: 'ftp://admin:hunter2@gw/v1?key=query-secret-1'}\n")
    line = one_error_line(run_cli("check-config", "--config", str(path), cwd=tmp_path))
    assert line.startswith("bezant-trio: gateway.url: ")
    assert "hunter2" not in line and "query-secret-1" not in line


def test_sink_entries_the_config_keeps_are_still_refused_by_the_sink_layer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    for sinks in (
        [{"type": "test"}],  # no name
        [{"name": "a"}],  # no type
        [{"name": "a", "type": "test"}, {"name": "a", "type": "test"}],  # a name used twice
    ):
        path.write_text(yaml.safe_dump({"sinks": sinks}))
        for command in ("check-config", "run"):
            one_error_line(run_cli(command, "--config", str(path), cwd=tmp_path))
