"""Security promises: loopback by default, tokens, constant-time checks, no secret leaks.

- The default bind is 127.0.0.1; a non-loopback bind without a token refuses
  to start (exit 2, one line) unless ``http.allow_unauthenticated``.
- The token is checked with ``hmac.compare_digest`` on every request, and a
  401 does not tell a wrong token from a missing or malformed header.
- No secret (the gateway session id, the API token, the webhook secret)
  appears in any log line, ``_status``, ``/metrics``, ``check-config`` or an
  error body, through a run full of faults.
"""

from __future__ import annotations

import hmac
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from bezant_trio.http.context import HttpContext
from bezant_trio.testing import DaemonProcess, run_cli
from helpers import SSL_CONTEXT

from .rig import WEBHOOK_SECRET, Rig

TOKEN = "tok-3c1f0a9e6b4d4f8e9a77d2c5b1e0f6aa"


def _secret_parts(secret: str) -> list[str]:
    return [secret, secret.removeprefix("whsec_")]


# ------------------------------------------------------------------ binding


def test_default_bind_is_loopback(tmp_path: Path) -> None:
    done = run_cli("check-config", cwd=tmp_path)  # no config.yaml here: built-in defaults
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["http"]["bind"] == "127.0.0.1:8080"


@pytest.mark.parametrize("bind", ["0.0.0.0:0", "[::]:0", "192.0.2.10:8080"])
def test_non_loopback_bind_without_a_token_refuses_to_start(tmp_path: Path, bind: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"http": {"bind": bind}}))
    done = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "http.bind" in lines[0], lines
    # The same through the environment variable bezant-server users set.
    done = run_cli("run", cwd=tmp_path, env={"BEZANT_BIND": bind})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # A token, or an explicit opt-out, makes the same bind acceptable.
    for http in ({"bind": bind, "token": TOKEN}, {"bind": bind, "allow_unauthenticated": True}):
        config.write_text(yaml.safe_dump({"http": http}))
        done = run_cli("check-config", "--config", str(config), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout


# ------------------------------------------------------------------ the token

_ATTEMPTS: dict[str, dict[str, str]] = {
    "no header": {},
    "empty": {"authorization": ""},
    "bare token": {"authorization": TOKEN},
    "basic scheme": {"authorization": f"Basic {TOKEN}"},
    "empty bearer": {"authorization": "Bearer"},
    "wrong token": {"authorization": "Bearer not-the-token"},
    "prefix of the token": {"authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus a byte": {"authorization": f"Bearer {TOKEN}x"},
    "other case token": {"authorization": f"Bearer {TOKEN.upper()}"},
}


async def test_401s_do_not_tell_which_part_was_wrong_and_use_compare_digest(
    hub: Any, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording_compare_digest(a: Any, b: Any) -> bool:
        compared.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording_compare_digest)
    hub.publish("orders", {"i": 1})
    base = await serve(HttpContext(hub=hub, token=TOKEN))
    answers = {}
    with trio.fail_after(20):
        async with httpx.AsyncClient(verify=SSL_CONTEXT) as client:
            for name, headers in _ATTEMPTS.items():
                compared.clear()
                response = await client.get(f"{base}/events/orders", headers=headers)
                headers_seen = {
                    k: v for k, v in response.headers.items() if k not in ("date", "content-length")
                }
                answers[name] = (response.status_code, response.content, headers_seen)
                # Every attempt, even one without a header, is compared in constant time.
                assert len(compared) == 1, (name, compared)
                assert TOKEN.encode() in compared[0], (name, compared)
            good = await client.get(
                f"{base}/events/orders", headers={"authorization": f"Bearer {TOKEN}"}
            )
            health = await client.get(f"{base}/health")
    assert good.status_code == 200 and health.status_code == 200
    first = answers["no header"]
    assert first[0] == 401 and json.loads(first[1])["code"] == "unauthorized"
    for name, answer in answers.items():
        assert answer == first, f"the 401 for {name!r} differs from the one without a header"
        assert TOKEN.encode() not in answer[1]


# ------------------------------------------------------------------ leaks


async def test_no_secret_in_any_output_of_a_full_fault_run(rig: Rig, tmp_path: Path) -> None:
    """A token, a signed webhook and a gateway session, then faults; grep every output."""
    rig.token = TOKEN
    sessions = {rig.sim.session}
    outputs: dict[str, str] = {}
    config = rig.config(test_sink=False)
    config["sinks"].append(
        {"name": "flaky", "type": "webhook", "url": rig.endpoint.url + "?x=1",
         "secret": "whsec_" + "c2VjcmV0LXR3by1zZWNyZXQtdHdv", "timeout": 0.5}
    )  # fmt: skip
    secrets = [TOKEN, *_secret_parts(WEBHOOK_SECRET), "c2VjcmV0LXR3by1zZWNyZXQtdHdv"]
    with trio.fail_after(120):
        daemon = await rig.start_process(config, env={"BEZANT_LOG_LEVEL": "DEBUG"})
        await rig.warm_up()
        assert rig.client is not None
        client = rig.client
        # Gateway faults: a drop, auth flaps, a restart with a new session.
        await rig.sim.drop_connections("abrupt")
        await rig.wait_status(lambda s: s["reconnect_count"] >= 1 and s["connected"])
        await rig.sim.send_auth_status(authenticated=False)
        await rig.wait_status(lambda s: s["reconnect_count"] >= 2 and s["connected"])
        rig.sim.set_authenticated(False)
        await rig.wait_status(lambda s: not s["connected"])
        await rig.wait_status(lambda s: "401" in (s["last_error"] or ""))
        outputs["status while unauthenticated"] = json.dumps(await rig.status())
        rig.sim.set_authenticated(True)
        sessions.add(await rig.sim.restart(down_for=0.5))
        await rig.wait_status(lambda s: s["reconnect_count"] >= 3 and s["connected"])
        sessions.add(rig.sim.session)
        # Webhook faults: errors, then 410.
        assert rig.endpoint is not None
        rig.endpoint.status = 500
        await rig.wait_status(lambda s: s["sinks"]["hook"]["failures"] > 0)
        rig.endpoint.status = 410
        await rig.wait_status(lambda s: s["sinks"]["hook"]["state"] == "disabled")
        rig.endpoint.status = 200
        await rig.wait_events(10)
        # Error bodies: wrong tokens (some containing the token), bad input.
        base = daemon.url
        for headers in [{}, {"authorization": f"Bearer {TOKEN}x"}, {"authorization": TOKEN}]:
            response = await client.get(f"{base}/events/orders", headers=headers)
            outputs[f"401 {headers}"] = response.text
        for path in [
            f"/events/orders?since=-1&token={TOKEN}",
            "/events/BAD TOPIC",
            "/events/marketdata",
            "/events/orders/history?since_ts=yesterday",
            "/nope",
            "/events/orders?wait=1e9",
        ]:
            response = await client.get(base + path, headers=rig.auth_headers)
            outputs[path] = f"{response.status_code} {response.text}"
        for path in ["/events/_status", "/metrics", "/health", "/openapi.json"]:
            response = await client.get(base + path, headers=rig.auth_headers)
            outputs[path] = response.text
        # A SIGHUP reload and a SIGTERM restart log more lines.
        daemon.send_signal(signal.SIGHUP)
        await rig.wait_events(5)
        assert await daemon.stop(signal.SIGTERM) == 0
        await daemon.start()
        await rig.wait_events(5)
        outputs["_status after restart"] = (await client.get(
            f"{daemon.url}/events/_status", headers=rig.auth_headers
        )).text  # fmt: skip
        await daemon.stop()
    config_path = tmp_path / "config.yaml"
    outputs["check-config"] = run_cli("check-config", "--config", str(config_path)).stdout
    bad = dict(config, sinks=[dict(config["sinks"][0], secret=WEBHOOK_SECRET + "!")])
    config_path.write_text(yaml.safe_dump(bad))
    done = run_cli("run", "--config", str(config_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    outputs["run with a bad secret"] = done.stderr
    outputs["daemon log"] = daemon.log_text(all_runs=True)
    assert len(outputs["daemon log"]) > 10_000  # DEBUG: there is plenty to grep
    for secret in [*secrets, *sessions]:
        for where, text in outputs.items():
            assert secret not in text, f"a secret ({secret[:6]}...) leaked into {where}"
    assert isinstance(rig.daemon, DaemonProcess)
